"""Faults injected into real cli.py runs through `--trainer.callbacks+=fault_callbacks.X`
(with tests/ on PYTHONPATH): each raises what a real failure would raise, at a real moment."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class PoisonWeights(Callback):
    """Turns the weights into NaN after `after_steps` optimizer steps: the loss diverges."""

    def __init__(self, after_steps: int = 0) -> None:
        self.after_steps = after_steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.after_steps:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class OutOfMemory(Callback):
    """Raises the error CUDA raises when memory runs out, mid-epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")


class KillSelf(Callback):
    """SIGKILL to its own process mid-epoch: what the OOM killer or a node failure does."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= 1:
            os.kill(os.getpid(), signal.SIGKILL)


class SigtermAfterFit(Callback):
    """SIGTERM right after training ended: W&B's controller (or the offline runner's death)
    stopping a run that reached its last band, while its test after fit is still to come."""

    long_ago = 0.0  # seconds the stop is made to look older than it is

    def on_fit_end(self, trainer, pl_module) -> None:
        from sweeps.contract.signals import StopSignal

        os.kill(os.getpid(), signal.SIGTERM)
        while not StopSignal.requested:  # the handler runs at the next bytecode of the main thread
            pass
        if self.long_ago:
            StopSignal.requested_at -= self.long_ago


class LateSigtermAfterFit(SigtermAfterFit):
    """The same stop, but past the grace already: the test after fit no longer fits."""

    long_ago = 1000.0
