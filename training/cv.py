"""Cross-validated trials: `python cli.py fit ... --cv.folds=5` trains k patient-level folds
as ONE run (one W&B run, one sweep trial), so W&B agents and the offline runner need no change.

* Each fold is this CLI again (`--data.folds=k --data.fold=i`, one device, W&B off) in the
  run directory's fold_i/ (checkpoints, metrics, its own test_report.json). Folds run in
  parallel, one per device (trainer.devices GPUs; on CPU that many processes), else in turn.
* One hyperband iteration is one epoch: when every fold has finished epoch e, the sweep
  metric's fold mean is logged once (W&B history row with `epoch`, and sweep_history.jsonl),
  with its standard deviation (`<metric>_std`) and each fold's value (`<metric>/fold_i`).
  Hyperband can therefore only compare a CV trial once all of its folds reached a band: give
  as many devices as folds for early stopping to save compute.
* Afterwards the operating point is chosen on the out-of-fold predictions
  (oof_predictions.csv; every image not in the test split is predicted once, by the fold that
  did not train on it) and the test split is scored by the fold ensemble (mean of the k
  models' probabilities), with patient-level CIs, next to each fold's own test figures.
* SIGTERM stops every fold cleanly (each saves last.ckpt) and the run exits 0; a fold that
  fails fails the run with the fold's reason. Folds that finished are kept: the same command
  with the same run directory (XRAY_RUN_DIR, as the offline runner sets it when it continues
  an interrupted trial) trains only the rest, each unfinished fold from its last checkpoint.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from datamodules.csvsafe import spreadsheet_safe
from evaluation import columns_of
from sweeps.contract import FOLD_DIR, HISTORY_FILE, RunStopped, StopSignal, append_history, cpu_threads
from training.evaluate import (
    OperatingPoint,
    choose_operating_point,
    patient_ids_of,
    publish_report,
    test_report_of,
)
from training.loggers import update_summary
from training.rundir import RUN_DIR_ENV, checkpoint_problem

log = logging.getLogger("cli")
FOLD_OUTPUTS = "fold_outputs.npz"  # a fold's validation (out-of-fold) and test logits, by relative path
FOLD_DONE = "fold_done.json"
CV_FILE = "cv.json"
OOF_FILE = "oof_predictions.csv"
POLL_S = 0.5
KILL_AFTER_S = 20.0  # folds' time to stop; with the W&B finish, within the agent's 30 s grace


class FoldFailed(ValueError):
    """A fold of a cross-validated run failed; the message is the fold's own reason."""


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / FOLD_DIR.format(fold)


def fold_slots(accelerator: Any, devices: Any) -> list[Optional[str]]:
    """CUDA_VISIBLE_DEVICES per parallel fold (None on CPU): one fold per device."""
    import torch

    gpu = str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available())
    if gpu:
        inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = [g for g in inherited.split(",") if g] if inherited is not None else \
            [str(i) for i in range(torch.cuda.device_count())]
        if isinstance(devices, (list, tuple)):
            return [visible[int(i)] for i in devices]
        count = len(visible) if devices in ("auto", -1, "-1", None) else int(devices)
        return visible[:count] or [None]
    count = 1 if devices in ("auto", -1, "-1", None) else len(devices) if isinstance(devices, (list, tuple)) \
        else int(devices)
    return [None] * max(1, count)


def fold_argv(args: list[str], folds: int, fold: int) -> list[str]:
    """This run's own arguments, then what makes it one fold (later arguments win)."""
    return [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py"), *args, "--cv.folds=0",
            f"--data.folds={folds}", f"--data.fold={fold}", "--trainer.devices=1", "--trainer.strategy=auto",
            "--run.wandb=disabled"]


def _reason(log_file: Path, code: int) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    errors = [ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else (lines[-1].strip() if lines else f"exit code {code}")


def _history(path: Path, metric: str) -> list[float]:
    rows = []
    try:
        for line in path.read_text().splitlines():
            value = json.loads(line).get(metric)
            rows.append(float(value) if isinstance(value, (int, float)) else float("nan"))
    except (OSError, json.JSONDecodeError):
        pass
    return rows


class CrossValidation:
    """Runs the folds of one CV run and logs their mean; `cli` is the parent XrayCLI."""

    def __init__(self, cli, args: list[str], metric: str, devices: tuple) -> None:
        cfg = cli.config_init[cli.subcommand]
        self.cli, self.args, self.metric = cli, args, metric
        self.folds, self.run_dir = int(cfg.cv.folds), Path(cli.run_dir)
        self.slots = fold_slots(*devices)
        self.logged = len(_history(self.run_dir / HISTORY_FILE, metric))  # rows already logged (a rerun)

    def done(self, fold: int) -> bool:
        return (fold_dir(self.run_dir, fold) / FOLD_DONE).is_file()

    def train(self) -> None:
        pending = [i for i in range(self.folds) if not self.done(i)]
        if len(pending) < self.folds:
            log.warning("cv: folds %s finished before; training folds %s", sorted(set(range(self.folds)) - set(pending)),
                        pending)
        running: dict[int, tuple[subprocess.Popen, int]] = {}
        try:
            while pending or running:
                if StopSignal.requested:
                    self._stop(running)
                    raise RunStopped("SIGTERM during cross-validation")
                busy = {slot for _, slot in running.values()}
                for slot in [s for s in range(len(self.slots)) if s not in busy]:
                    if pending:
                        fold = pending.pop(0)
                        running[fold] = (self._launch(fold, self.slots[slot]), slot)
                for fold, (proc, _) in list(running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    del running[fold]
                    if code != 0 or not self.done(fold):
                        self._stop(running)
                        reason = _reason(fold_dir(self.run_dir, fold) / "output.log", code)
                        raise FoldFailed(f"fold {fold} of {self.folds} failed: {reason}")
                self._log_complete_epochs()
                time.sleep(POLL_S)
        finally:
            for proc, _ in running.values():  # only on an unexpected error: leave nothing behind
                if proc.poll() is None:
                    proc.kill()
        self._log_complete_epochs()

    def _launch(self, fold: int, slot: Optional[str]) -> subprocess.Popen:
        directory = fold_dir(self.run_dir, fold)
        directory.mkdir(parents=True, exist_ok=True)
        argv = fold_argv(self.args, self.folds, fold)
        last = directory / "checkpoints" / "last.ckpt"
        if last.is_file() and checkpoint_problem(str(last)) is None:
            # A fold stopped or killed before: it continues from its last epoch (its history
            # is cut back to that epoch by the run itself).
            argv.append(f"--ckpt_path={last}")
            started = "continues from its last checkpoint"
        else:
            (directory / HISTORY_FILE).unlink(missing_ok=True)  # no checkpoint: the fold starts over
            started = "started"
        env = dict(os.environ, **{RUN_DIR_ENV: str(directory)})
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        threads = cpu_threads(self.slots)  # parallel folds on the CPU share its cores
        if threads is not None:
            env["OMP_NUM_THREADS"] = threads
        with open(directory / "output.log", "ab") as out:  # a continued fold keeps its earlier log
            log.info("cv: fold %d of %d %s%s", fold, self.folds, started, f" on GPU {slot}" if slot else "")
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _stop(self, running: dict) -> None:
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.terminate()  # each fold saves last.ckpt and exits 0
        deadline = time.monotonic() + KILL_AFTER_S
        for proc, _ in running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

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
        point = choose_operating_point(oof_logits, oof_labels, cfg.eval)
        self._write_oof(outputs, point)
        (self.run_dir / CV_FILE).write_text(json.dumps({
            "folds": self.folds, "metric": self.metric, "operating_point": point.to_dict(),
            "checkpoints": [str(Path(f"fold_{i}") / str(o["best_checkpoint"])) for i, o in enumerate(outputs)],
        }, indent=1))
        cli.model.operating_point = point
        if not all(len(o["test_rel"]) for o in outputs):
            return None
        by_rel = {r.rel: r for r in cli.datamodule.records}
        order = [str(r) for r in outputs[0]["test_rel"]]
        probs = []
        for o in outputs:
            row_of = {str(r): i for i, r in enumerate(o["test_rel"])}
            probs.append(point.probabilities(o["test_logits"][[row_of[r] for r in order]]))
        records = [by_rel[r] for r in order]
        labels = np.array([cli.datamodule.class_index[r.label] for r in records])
        report = test_report_of(np.mean(probs, axis=0), labels, patient_ids_of(records), cli.model.class_names, point,
                                cfg.eval, columns=columns_of(records))
        report["ensemble"] = {"folds": self.folds, "how": "mean of the folds' probabilities",
                              "fold_test": [_fold_figures(fold_dir(self.run_dir, i)) for i in range(self.folds)]}
        return report

    def _write_oof(self, outputs: list, point: OperatingPoint) -> None:
        names = self.cli.model.class_names
        with open(self.run_dir / OOF_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "fold", *[f"prob_{spreadsheet_safe(n)}" for n in names]])
            for fold, o in enumerate(outputs):
                probs = point.probabilities(o["val_logits"])
                for rel, label, p in zip(o["val_rel"], o["val_labels"], probs):
                    writer.writerow([spreadsheet_safe(str(rel)), spreadsheet_safe(names[int(label)]), fold,
                                     *[f"{v:.6f}" for v in p]])


def _fold_figures(directory: Path) -> Optional[dict]:
    try:
        report = json.loads((directory / "test_report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {name: figure["estimate"] for name, figure in report["metrics"].items()}


def save_fold_outputs(cli) -> None:
    """In a fold's process: its validation (out-of-fold) and test logits, by relative path."""
    dm, outputs = cli.datamodule, cli.model.epoch_outputs

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
    point = cli.model.operating_point
    if point is not None and point.threshold is not None:
        update_summary(cli.trainer, {"eval/threshold": point.threshold.value,
                                     "eval/threshold_rule": f"{point.threshold.rule} (out-of-fold)"})
    if report is not None and cfg.run.test_after_fit:
        publish_report(report, cli.run_dir, cli.trainer, cli.model.class_names)


def _continues_same_run(run_dir: Path, saving) -> bool:
    """True when run_dir holds folds of this very run (the same command again, to train the
    folds that did not finish); refused when they were trained with other settings, whose
    folds must not be mixed with these."""
    saved = Path(run_dir) / saving.config_filename
    if not (saved.is_file() and fold_dir(run_dir, 0).is_dir()):
        return False
    if saved.read_text() != saving.parser.dump(saving.config, skip_none=False):
        raise ValueError(f"run directory {run_dir} holds a cross-validated run with other settings (its "
                         f"{saving.config_filename} differs from this command's): its folds cannot be reused; "
                         "run in a new directory, or repeat the command that made it")
    return True


def predict_with_ensemble(cli, run_dir: Path) -> OperatingPoint:
    """`predict --cv.run_dir DIR`: the mean of the folds' probabilities, decided at the CV run's
    operating point (chosen on its out-of-fold predictions)."""
    from models.reporting import write_predictions

    try:
        saved = json.loads((run_dir / CV_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"cv.run_dir {run_dir} is not a finished cross-validated run (no readable "
                                f"{CV_FILE}: {e})") from None
    point = OperatingPoint.from_dict(saved["operating_point"])
    probs, index = [], None
    for ckpt in saved["checkpoints"]:
        batches = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=str(run_dir / ckpt),
                                      return_predictions=True)
        index = np.concatenate([b["index"].cpu().numpy() for b in batches])
        probs.append(point.probabilities(np.concatenate([b["logits"].cpu().numpy() for b in batches])))
    records = cli.datamodule.records_of("predict")
    rows = [(records[i].rel, records[i].label, p) for i, p in zip(index, np.mean(probs, axis=0))]
    write_predictions(cli.run_dir / "predictions.csv", rows, cli.model.class_names, point)
    return point
