"""RunGuard (README, "How the sweep files work with LightningCLI" and "A stop after training").
Why a flag and a periodic all-reduce: Lightning's own SIGTERM handler runs a collective inside
the signal handler, which can deadlock when the signal lands inside another collective.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from rundir.grace import FINISH_GRACE_S
from rundir.layout import LAST_CHECKPOINT
from sweeps.contract.lightning_adapter import keep_sigterm_handler
from sweeps.contract.signals import StopSignal

log = logging.getLogger(__name__)
CHECK_EVERY = 4  # batches


class RunStopped(Exception):
    """Raised on every rank once all ranks agreed to stop after SIGTERM."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run fails fast with this reason."""


class RunGuard(Callback):
    """Stops a run cleanly on a stop request and fails it fast on a NaN/inf training loss.

    Every CHECK_EVERY batches all ranks exchange the flags in one all-reduce. Every rank runs the
    same number of batches, so every rank takes part in the same collectives and none waits alone;
    checking every few batches keeps the cost (a host sync, a tiny collective) off most steps. A
    NaN on one rank reaches the others only through the gradients, hence the agreement for it too.
    """

    finish_grace_s = FINISH_GRACE_S  # the CLI's message names it

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.training_done = False  # fit ended: what runs now is evaluation
        self._noted = False
        self._calls: dict[str, int] = {}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.training_done = not trainer.interrupted

    def grace_left(self) -> bool:
        """After training, whether a stop that arrived still leaves time for the evaluation."""
        return self.training_done and StopSignal.seconds_since() <= FINISH_GRACE_S

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        StopSignal.install()
        keep_sigterm_handler(trainer, StopSignal.install)

    def _due(self, loop: str) -> bool:
        self._calls[loop] = self._calls.get(loop, 0) + 1
        return (self._calls[loop] - 1) % CHECK_EVERY == 0

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Optional[torch.Tensor] = None) -> None:
        bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        # Only the rank that got the signal knows when; the third flag carries "past the grace".
        late = StopSignal.requested and StopSignal.seconds_since() > FINISH_GRACE_S
        flags = torch.tensor([float(StopSignal.requested), float(bad), float(late)], device=pl_module.device)
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
        stop, diverged, late = bool(flags[0] > 0), bool(flags[1] > 0), bool(flags[2] > 0)
        if diverged:
            value = float(loss) if loss is not None else math.nan
            raise Diverged(
                f"training diverged: loss is {value:g} on some rank at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step} (try a lower model.lr)"
            )
        if not stop:
            return
        if self.training_done and not late:
            if not self._noted:
                self._noted = True
                log.warning("stop requested (%s) after training ended: the evaluation goes on for up to %.0f s",
                            StopSignal.reason, FINISH_GRACE_S)
            return
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            trainer.save_checkpoint(str(Path(self.checkpoint_dir) / Path(LAST_CHECKPOINT).name))
        raise RunStopped(f"stopped by {StopSignal.reason}")

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
