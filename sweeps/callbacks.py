"""Callbacks that make a training run a well-behaved sweep run (W&B agent or offline runner).

SweepMetric: W&B's hyperband counts the history rows that contain the sweep metric, so the
metric must appear exactly once per validation epoch, with `epoch` in the same row, never
during the sanity check, from rank 0 only. Lightning's epoch-end logging already writes one
row per validation epoch on rank 0 with `epoch` in it; this callback adds a combined
objective to that same row, warns when validation runs more or less than once per epoch,
and appends each value to `sweep_history.jsonl` in the run directory for the offline runner.

RunGuard: the W&B agent stops a run with SIGTERM to the main process only and SIGKILL
30 s later. Lightning's own SIGTERM handler runs a collective inside the signal handler,
which can deadlock when the signal lands inside another collective. Here the handler only
sets a flag; every few batches all ranks agree on it with one all-reduce (every rank is at
the same batch, so no rank waits alone), save `last.ckpt` and raise RunStopped, which the
CLI turns into a finished W&B run and exit code 0. The same all-reduce fails the run fast
when the training loss is NaN or infinite (Diverged).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from sweeps.history import append_history
from sweeps.stop import StopSignal

log = logging.getLogger(__name__)


class RunStopped(Exception):
    """Raised on every rank once all ranks agreed to stop after SIGTERM."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run fails fast with this reason."""


class RunGuard(Callback):
    """Stops a run cleanly on SIGTERM and fails it fast on a NaN/inf training loss.

    Every `every` batches all ranks exchange two flags in one all-reduce: "a SIGTERM arrived"
    and "the training loss is not finite". Every rank runs the same number of batches, so
    every rank takes part in the same collectives and none waits alone; checking every few
    batches keeps the cost (a host sync, a tiny collective) off most steps. A NaN on one rank
    reaches the others only through the gradients, hence the agreement for it too.
    """

    def __init__(self, checkpoint_dir: Optional[Path] = None, every: int = 4) -> None:
        self.checkpoint_dir, self.every = checkpoint_dir, max(1, every)
        self.stopped = False
        self._calls: dict[str, int] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        StopSignal.install()
        # Lightning registers its own SIGTERM handler right after `setup` (Trainer._run); keep ours.
        trainer._signal_connector.register_signal_handlers = StopSignal.install

    def _due(self, loop: str) -> bool:
        self._calls[loop] = self._calls.get(loop, 0) + 1
        return self._calls[loop] % self.every == 1 or self.every == 1

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Optional[torch.Tensor] = None) -> None:
        bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        flags = torch.tensor([float(StopSignal.requested), float(bad)], device=pl_module.device)
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
        stop, diverged = bool(flags[0] > 0), bool(flags[1] > 0)
        if diverged:
            value = float(loss) if loss is not None else math.nan
            raise Diverged(
                f"training diverged: loss is {value:g} on some rank at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step} (try a lower model.lr)"
            )
        if not stop:
            return
        self.stopped = True
        if self.checkpoint_dir is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            trainer.save_checkpoint(str(Path(self.checkpoint_dir) / "last.ckpt"))
        raise RunStopped("stopped by SIGTERM")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due("train"):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._check(trainer, pl_module, loss)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due("val"):
            self._check(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due("test"):
            self._check(trainer, pl_module)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # predict shards are uneven across ranks, so a collective here could wait forever
        if trainer.world_size == 1 and self._due("predict"):
            self._check(trainer, pl_module)


def objective_value(objective: dict[str, float], metrics: dict[str, torch.Tensor]) -> float:
    """Weighted sum of metrics, e.g. {"val/auroc": 0.7, "val/balanced_acc": 0.3}."""
    return float(sum(weight * float(metrics[name]) for name, weight in objective.items()))


class SweepMetric(Callback):
    def __init__(self, metric: str, objective: Optional[dict[str, float]] = None, history_file: Optional[Path] = None):
        self.metric, self.objective, self.history_file = metric, objective, history_file

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.val_check_interval != 1.0 or (trainer.check_val_every_n_epoch or 1) != 1:
            log.warning(
                "trainer.val_check_interval=%s / check_val_every_n_epoch=%s: the sweep metric %s is logged "
                "once per validation, so hyperband's min_iter/max_iter count validations, not epochs.",
                trainer.val_check_interval, trainer.check_val_every_n_epoch, self.metric,
            )
        if self.objective:
            # val/loss is logged by Lightning after this callback runs, so it cannot take part.
            available = {n for n in getattr(pl_module, "metric_names", lambda s: [])("val") if n != "val/loss"}
            unknown = sorted(set(self.objective) - available)
            if unknown:
                raise ValueError(f"sweep.objective names unknown metric(s) {unknown}; allowed: {sorted(available)}")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.objective or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = objective_value(self.objective, pl_module.current_metrics("val"))
        # Logged in the same epoch-end row as the module's val/* metrics and `epoch`.
        pl_module.log(self.metric, value)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        if self.history_file is None:
            return
        value = trainer.callback_metrics.get(self.metric)
        value = float(value) if value is not None else math.nan
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, self.metric: value}
        append_history(self.history_file, row)
