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


class KillSelfInFold(Callback):
    """SIGKILL in fold $KILL_FOLD of a cross-validated run when it starts epoch `epoch` (its
    last.ckpt holds the epochs before): a node failure in the middle of a CV run. The fold comes
    from the environment so that the rerun is the very same command, without the failure."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        fold = os.environ.get("KILL_FOLD")
        if fold is not None and trainer.datamodule.hparams.fold == int(fold) and trainer.current_epoch >= self.epoch:
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


class WorsenAfterEpoch(Callback):
    """From the training epoch after `epoch` on, scrambles every weight before the epoch starts
    (seeded noise ten times the weight's mean magnitude): every later checkpoint is far worse than
    the one of `epoch`, and its predictions differ from it."""

    def __init__(self, epoch: int = 0, scale: float = 10.0) -> None:
        self.epoch, self.scale = epoch, scale

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch <= self.epoch:
            return
        generator = torch.Generator().manual_seed(1000 + trainer.current_epoch)
        with torch.no_grad():
            for p in pl_module.parameters():
                noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
                p.add_(noise * self.scale * (float(p.abs().mean()) or 1.0))


def _replace_images(batch, make) -> None:
    x, y = batch[0], batch[1]
    with torch.no_grad():
        x.copy_(make(x, y))


class Blindfold(Callback):
    """Every image the model sees (training and validation) is blank: it cannot learn, its
    outputs are equal for all images, so its validation AUROC is exactly 0.5 every epoch."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _replace_images(batch, lambda x, y: torch.zeros_like(x))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        _replace_images(batch, lambda x, y: torch.zeros_like(x))


class LabelInImage(Callback):
    """Every image the model sees is brightened or darkened by its label (two standard deviations
    up for class 1, down for class 0): a task any network learns within an epoch or two, so the
    run scores well from the start. Training ends after `epochs` epochs, whatever
    trainer.max_epochs says."""

    def __init__(self, epochs: int = 3) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True

    @staticmethod
    def _paint(x, y):
        return x + 2.0 * (2.0 * y.to(x.dtype) - 1.0).view(-1, *([1] * (x.dim() - 1)))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _replace_images(batch, self._paint)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        _replace_images(batch, self._paint)


class Beacon(Callback):
    """Writes where training is (`epoch batch` per training batch, rank 0) to beacon.txt in the run
    directory, so that a test can act at a moment of training instead of after a guessed sleep."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            with open(os.path.join(trainer.default_root_dir, "beacon.txt"), "a") as f:
                f.write(f"{trainer.current_epoch} {batch_idx}\n")
