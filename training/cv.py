"""Cross-validated trials (`fit --cv.folds=K`, README "Cross-validated trials"): one run whose
K folds are this CLI again, each in the run directory's fold_i/, started, watched and stopped
by rundir/launcher.py; their mean is the sweep metric, the operating point is chosen out of
fold and the fold ensemble is tested. A rerun on the same directory trains only the folds
that did not finish."""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

import rundir.launcher as launcher
from datamodules.csvsafe import spreadsheet_safe
from evaluation import columns_of
from models.teaching import ensemble_overlays
from rundir.atomic import replacing, write_atomic
from rundir.grace import CHILD_STOP_S
from rundir.layout import (
    CV_FILE,
    FOLD_DONE,
    FOLD_OUTPUTS,
    HISTORY_FILE,
    LAST_CHECKPOINT,
    OOF_FILE,
    OUTPUT_LOG,
    TEST_REPORT,
    TRAINING_FILE,
    fold_dir,
    is_cv_run,
)
from rundir.records import checkpoint_problem, failure_reason
from rundir.slots import fold_slots
from sweeps.contract.guard import RunStopped
from sweeps.contract.history import append_history, read_history, write_training
from sweeps.contract.signals import StopSignal
from training.ensemble import read_cv_run
from training.evaluate import patient_ids_of
from training.loggers import update_summary
from training.operating_point import OperatingPoint, choose_operating_point
from training.writers import publish_report, test_report_of

log = logging.getLogger("cli")
PROGRAM = Path(__file__).resolve().parents[1] / "cli.py"  # each fold is this CLI again


class FoldFailed(ValueError):
    """A fold of a cross-validated run failed; the message is the fold's own reason."""


def _history(path: Path, metric: str) -> list[float]:
    """A fold's sweep metric per epoch; NaN where it was not finite (the mean is then NaN too)."""
    return [math.nan if v is None else v for v in read_history(path, metric)]


class CrossValidation:
    """Runs the folds of one CV run and logs their mean; `cli` is the parent XrayCLI.
    `devices` is (trainer.accelerator, trainer.devices) as the command gave them."""

    def __init__(self, cli, args: list[str], metric: str, devices: tuple, program: Path = PROGRAM) -> None:
        cfg = cli.config_init[cli.subcommand]
        self.cli, self.args, self.metric, self.program = cli, args, metric, program
        self.folds, self.run_dir = int(cfg.cv.folds), Path(cli.run_dir)
        self.slots = fold_slots(*devices, folds_per_device=int(cfg.cv.folds_per_device), folds=self.folds)
        self.logged = len(_history(self.run_dir / HISTORY_FILE, metric))  # rows already logged (a rerun)
        epochs = getattr(cli.trainer, "max_epochs", None)
        self.planned = epochs if isinstance(epochs, int) and epochs > 0 else None

    def done(self, fold: int) -> bool:
        return (fold_dir(self.run_dir, fold) / FOLD_DONE).is_file()

    def train(self) -> None:
        pending = [i for i in range(self.folds) if not self.done(i)]
        if len(pending) < self.folds:
            log.warning("cv: folds %s finished before; training folds %s", sorted(set(range(self.folds)) - set(pending)),
                        pending)
        # The runner reads this as it reads a single run's: the mean rows it plans, then "done",
        # so that hyperband never cuts the ensemble evaluation that follows training.
        write_training(self.run_dir / TRAINING_FILE, self.planned, done=False)
        running: dict[int, launcher.Launched] = {}
        try:
            while pending or running:
                if StopSignal.requested:
                    launcher.stop_all(running.values(), CHILD_STOP_S)  # each fold saves last.ckpt, exits 0
                    running.clear()
                    raise RunStopped("SIGTERM during cross-validation")
                while pending and (slot := launcher.free_slot(running.values(), self.slots)) is not None:
                    fold = pending.pop(0)
                    running[fold] = self._launch(fold, slot)
                for fold, run in list(running.items()):
                    code = run.poll()
                    if code is None:
                        continue
                    del running[fold]
                    if code != 0 or not self.done(fold):
                        launcher.stop_all(running.values(), CHILD_STOP_S)
                        running.clear()
                        reason = failure_reason(fold_dir(self.run_dir, fold) / OUTPUT_LOG, code)
                        raise FoldFailed(f"fold {fold} of {self.folds} failed: {reason}")
                self._log_complete_epochs()
                time.sleep(launcher.POLL_S)
        finally:
            for run in running.values():  # only on an unexpected error: leave nothing behind
                run.kill()
        self._log_complete_epochs()
        write_training(self.run_dir / TRAINING_FILE, self.planned, done=True)

    def _launch(self, fold: int, slot: int) -> launcher.Launched:
        directory = fold_dir(self.run_dir, fold)
        directory.mkdir(parents=True, exist_ok=True)
        # This run's own arguments, then what makes it one fold (later arguments win).
        argv = [sys.executable, str(self.program), *self.args, "--cv.folds=0", f"--data.folds={self.folds}",
                f"--data.fold={fold}", "--trainer.devices=1", "--trainer.strategy=auto",
                "--run.wandb=disabled"]
        last = directory / LAST_CHECKPOINT
        if last.is_file() and checkpoint_problem(last) is None:
            # A fold stopped or killed before: it continues from its last epoch (its history
            # is cut back to that epoch by the run itself).
            argv.append(f"--ckpt_path={last}")
            started = "continues from its last checkpoint"
        else:
            (directory / HISTORY_FILE).unlink(missing_ok=True)  # no checkpoint: the fold starts over
            started = "started"
        gpu = self.slots[slot]
        log.info("cv: fold %d of %d %s%s", fold, self.folds, started, f" on GPU {gpu}" if gpu else "")
        # In the parent's process group: whoever kills the parent's group ends the folds too.
        return launcher.start(argv, directory, slot=slot, slots=self.slots, own_group=False)

    def _log_complete_epochs(self) -> None:
        """The fold mean of every epoch that all folds have finished, once."""
        histories = [_history(fold_dir(self.run_dir, i) / HISTORY_FILE, self.metric) for i in range(self.folds)]
        while all(len(h) > self.logged for h in histories):
            epoch = self.logged
            values = [h[epoch] for h in histories]
            row = {self.metric: statistics.fmean(values), f"{self.metric}_std": statistics.pstdev(values),
                   **{f"{self.metric}/fold_{i}": v for i, v in enumerate(values)}}
            for logger in self.cli.trainer.loggers:
                logger.log_metrics({**row, "epoch": epoch}, step=epoch)
            append_history(self.run_dir / HISTORY_FILE, {"epoch": epoch, "step": epoch, **row})
            self.logged += 1

    # ---- after training: out-of-fold operating point, ensemble test -----------------------------

    def evaluate(self) -> Optional[dict]:
        cli, cfg = self.cli, self.cli.config_init[self.cli.subcommand]
        outputs = [np.load(fold_dir(self.run_dir, i) / FOLD_OUTPUTS, allow_pickle=False) for i in range(self.folds)]
        oof_logits = np.concatenate([o["val_logits"] for o in outputs])
        oof_labels = np.concatenate([o["val_labels"] for o in outputs])
        by_rel = {r.rel: r for r in cli.datamodule.records}
        oof_patients = patient_ids_of([by_rel[str(r)] for o in outputs for r in o["val_rel"]])
        point = choose_operating_point(oof_logits, oof_labels, cfg.eval, oof_patients)  # patients out of fold
        self._write_oof(outputs, point)
        write_atomic(self.run_dir / CV_FILE, json.dumps({
            "folds": self.folds, "metric": self.metric, "operating_point": point.to_dict(),
            "checkpoints": [str(fold_dir(Path(), i) / str(o["best_checkpoint"]))
                            for i, o in enumerate(outputs)],
        }, indent=1))
        cli.evaluation.use(cli.trainer, point)
        if point.threshold is not None:
            update_summary(cli.trainer, {"eval/threshold_rule": f"{point.threshold.rule} (out-of-fold)"})
        if not all(len(o["test_rel"]) for o in outputs):
            return None
        order = [str(r) for r in outputs[0]["test_rel"]]
        probs = []
        for o in outputs:
            row_of = {str(r): i for i, r in enumerate(o["test_rel"])}
            probs.append(point.probabilities(o["test_logits"][[row_of[r] for r in order]]))
        records = [by_rel[r] for r in order]
        labels = np.array([cli.datamodule.class_index[r.label] for r in records])
        self.ensemble_test = (np.mean(probs, axis=0), labels, order, point)  # for eval.explain's overlays
        report = test_report_of(self.ensemble_test[0], labels, patient_ids_of(records), cli.model.class_names,
                                point, cfg.eval, columns=columns_of(records))
        report["ensemble"] = {"folds": self.folds, "how": "mean of the folds' probabilities",
                              "fold_test": [_fold_figures(fold_dir(self.run_dir, i)) for i in range(self.folds)]}
        return report

    def _write_oof(self, outputs: list, point: OperatingPoint) -> None:
        names = self.cli.model.class_names
        with replacing(self.run_dir / OOF_FILE) as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "fold", *[f"prob_{spreadsheet_safe(n)}" for n in names]])
            for fold, o in enumerate(outputs):
                probs = point.probabilities(o["val_logits"])
                for rel, label, p in zip(o["val_rel"], o["val_labels"], probs):
                    writer.writerow([spreadsheet_safe(str(rel)), spreadsheet_safe(names[int(label)]), fold,
                                     *[f"{v:.6f}" for v in p]])


def _fold_figures(directory: Path) -> Optional[dict]:
    try:
        report = json.loads((directory / TEST_REPORT).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {name: figure["estimate"] for name, figure in report["metrics"].items()}


def save_fold_outputs(cli) -> None:
    """In a fold's process: its validation (out-of-fold) and test logits, by relative path."""
    dm, outputs = cli.datamodule, cli.evaluation.outputs

    def part(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = outputs.get(split)
        if out is None:
            return np.zeros((0,), dtype=str), np.zeros((0, cli.model.hparams.num_classes)), np.zeros((0,), int)
        records = dm.records_of(split)
        return np.array([records[i].rel for i in out["index"]]), out["logits"], out["labels"]

    val_rel, val_logits, val_labels = part("val")
    test_rel, test_logits, _ = part("test")
    best = Path(cli.checkpoint.best_model_path or cli.checkpoint.last_model_path)
    np.savez(cli.run_dir / FOLD_OUTPUTS, val_rel=val_rel, val_logits=val_logits, val_labels=val_labels,
             test_rel=test_rel, test_logits=test_logits,
             best_checkpoint=np.array(best.relative_to(cli.run_dir).as_posix() if best.name else ""))
    (cli.run_dir / FOLD_DONE).write_text(json.dumps({"fold": cli.datamodule.hparams.fold}))


def cross_validate(cli, devices: tuple) -> None:
    """The whole CV run in the parent process: config.yaml, the folds, then the evaluation."""
    from lightning.pytorch.cli import SaveConfigCallback

    cfg = cli.config_init[cli.subcommand]
    for callback in cli.trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):  # the run's config.yaml, as a fit writes it
            if not _continues_same_run(cli.run_dir, callback):
                callback.setup(cli.trainer, cli.model, stage="fit")
    cv = CrossValidation(cli, cli.args, cfg.sweep.metric or cfg.run.monitor, devices)
    cv.train()
    report = cv.evaluate()
    if report is not None and cfg.run.test_after_fit:
        publish_report(report, cli.run_dir, cli.trainer, cli.model.class_names)
        if cfg.eval.explain:  # the fold ensemble's maps of the test images chosen to teach
            ensemble_overlays(cli, *cv.ensemble_test[:3], read_cv_run(cli.run_dir)[1], cv.ensemble_test[3])


def _continues_same_run(run_dir: Path, saving) -> bool:
    """True when run_dir holds folds of this very run (the same command again, to train the
    folds that did not finish); refused when they were trained with other settings, whose
    folds must not be mixed with these."""
    saved = Path(run_dir) / saving.config_filename
    if not (saved.is_file() and is_cv_run(run_dir)):
        return False
    if saved.read_text() != saving.parser.dump(saving.config, skip_none=False):
        raise ValueError(f"run directory {run_dir} holds a cross-validated run with other settings (its "
                         f"{saving.config_filename} differs from this command's): its folds cannot be reused; "
                         "run in a new directory, or repeat the command that made it")
    return True
