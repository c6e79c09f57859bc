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
