"""Every name a run directory holds, in one place: whatever reads or writes a run imports them
from here (README, "Run directories")."""

from __future__ import annotations

from pathlib import Path

RUN_DIR_ENV = "XRAY_RUN_DIR"  # set by the runner, the CV parent, and rank 0 for its DDP children

CONFIG_FILE = "config.yaml"  # LightningCLI's SaveConfigCallback
METRICS_FILE = "metrics.csv"  # CSVLogger
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"  # the latest epoch; saved each epoch and on a stop
BEST_CHECKPOINT = "best-{epoch:03d}"  # ModelCheckpoint's filename pattern (best-NNN.ckpt)
HISTORY_FILE = "sweep_history.jsonl"  # one row per validation epoch: what hyperband reads
TRAINING_FILE = "training.json"  # planned validations, then {"done": true}: evaluation follows
RUN_RECORD = "run.json"  # written by the offline runner: its facts about the run
COMPLETED = ("finished", "stopped")  # run.json states whose value is ranked: by best, report and prune
OUTPUT_LOG = "output.log"  # the run's stdout and stderr, appended to when it continues
TEST_REPORT = "test_report.json"
EXPLAIN_DIR = "explanations"  # eval.explain: predict's overlays, and the test's (models/teaching.py)
TEST_OVERLAYS = f"{EXPLAIN_DIR}/test_overlays.json"  # read by the report
PREDICTIONS_FILE = "predictions.csv"

# A cross-validated run: one directory per fold, each an ordinary run directory, plus the
# parent's own files. It has no checkpoint of its own: it continues from its folds.
FOLD_DIR = "fold_{}"
CV_FILE = "cv.json"  # operating point chosen out of fold, the folds' checkpoints
OOF_FILE = "oof_predictions.csv"
FOLD_OUTPUTS = "fold_outputs.npz"  # a fold's validation (out-of-fold) and test logits
FOLD_DONE = "fold_done.json"  # a fold finished (training and its outputs)


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / FOLD_DIR.format(fold)


def is_cv_run(run_dir: Path) -> bool:
    """A cross-validated run's directory (it keeps its folds, not a checkpoint)."""
    return fold_dir(run_dir, 0).is_dir()

LOCK_FILE = "fit.lock"  # held by the `fit` that writes into the directory (create.adopt_run_dir)
# What marks a directory as one this project made (a runner writes output.log before the run starts).
MARKERS = (CONFIG_FILE, CHECKPOINT_DIR, METRICS_FILE, HISTORY_FILE, TRAINING_FILE, RUN_RECORD, OUTPUT_LOG, LOCK_FILE,
           FOLD_DIR.format(0))
