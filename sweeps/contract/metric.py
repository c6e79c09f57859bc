"""SweepMetric: the sweep metric once per validation epoch, as W&B's hyperband counts it (README,
"How the sweep files work with LightningCLI"). Lightning's epoch-end logging already writes one
row per validation epoch on rank 0 with `epoch` in it; a combined objective joins that row.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from sweeps.contract.history import TRAINING_FILE, append_history, truncate_history, write_training

log = logging.getLogger(__name__)


def _once_per_epoch(trainer: pl.Trainer) -> bool:
    return trainer.val_check_interval == 1.0 and (trainer.check_val_every_n_epoch or 1) == 1


class SweepMetric(Callback):
    def __init__(self, metric: str, objective: Optional[dict[str, float]], history_file: Path, metrics: Any):
        """metrics: what computes the validation metrics (`metric_names(stage)`,
        `current_metrics(stage)`: training.evaluate.Evaluation, listed before this callback)."""
        self.metric, self.objective, self.history_file = metric, objective, history_file
        self.metrics = metrics

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not _once_per_epoch(trainer):
            log.warning(
                "trainer.val_check_interval=%s / check_val_every_n_epoch=%s: the sweep metric %s is logged "
                "once per validation, so hyperband's min_iter/max_iter count validations, not epochs.",
                trainer.val_check_interval, trainer.check_val_every_n_epoch, self.metric,
            )
        logged = self.metrics.metric_names("val")
        if self.objective:
            # val/loss is logged by Lightning after this callback runs, so it cannot take part.
            available = [n for n in logged if n != "val/loss"]
            unknown = sorted(set(self.objective) - set(available))
            if unknown:
                raise ValueError(f"sweep.objective names unknown metric(s) {unknown}; allowed: {available}")
        elif self.metric not in logged:
            # e.g. val/sensitivity on a 3-class task: the run would never log it, hyperband never sees it
            raise ValueError(f"sweep.metric {self.metric!r} is not logged by this model "
                             f"({pl_module.hparams.get('num_classes', '?')} classes); it logs {logged}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a checkpoint was restored, current_epoch is the first epoch that trains now.
        if trainer.is_global_zero:
            dropped = truncate_history(self.history_file, trainer.current_epoch)
            if dropped:
                log.warning("resumed at epoch %d: dropped %d row(s) of %s that this run trains again",
                            trainer.current_epoch, dropped, self.history_file.name)
            epochs = trainer.max_epochs if _once_per_epoch(trainer) and trainer.max_steps == -1 else None
            write_training(self.history_file.with_name(TRAINING_FILE), epochs if epochs and epochs > 0 else None,
                           done=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            write_training(self.history_file.with_name(TRAINING_FILE), trainer.max_epochs, done=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.objective or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = self.metrics.current_metrics("val")
        value = float(sum(weight * float(metrics[name]) for name, weight in self.objective.items()))
        # Logged in the same epoch-end row as the module's val/* metrics and `epoch`.
        pl_module.log(self.metric, value)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.metric)
        value = float(value) if value is not None else math.nan
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, self.metric: value}
        append_history(self.history_file, row)
