"""W&B and CSV logging of a run: never block on the network, always leave CSV metrics."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from training.options import RunOptions

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(requested: str) -> str:
    """Never block on the network: online only when asked for (or under an agent) and logged in."""
    env_mode = os.environ.get("WANDB_MODE")
    if requested == "auto":
        if env_mode in ("offline", "disabled", "online"):
            requested = env_mode
        else:
            requested = "online" if os.environ.get("WANDB_SWEEP_ID") else "offline"
    if requested == "online" and not wandb_logged_in():
        log.warning("W&B: not logged in (`wandb login`), logging offline; upload later with `wandb sync`.")
        return "offline"
    return requested


def default_loggers(run: RunOptions, run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    mode = resolve_wandb_mode(run.wandb)
    if mode != "disabled":
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                project=run.project or os.environ.get("WANDB_PROJECT") or "xray-classifier",
                entity=run.entity,
                name=f"{run_dir.parent.name}/{run_dir.name}",
                mode=mode,
                log_model=False,
            )
        )
    loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=""))
    return loggers


def finish_wandb(trainer: Trainer, exit_code: int) -> None:
    """Now, not at interpreter exit: in-process callers see a complete run and a second cli_main
    starts a new one. `wandb.run` is W&B's public handle of the current run (None: none started)."""
    if not trainer.is_global_zero or not any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)


def update_summary(trainer: Trainer, values: dict) -> None:
    """Figures that belong to the run as a whole (test CIs, the threshold) in W&B's summary."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.summary.update(values)


class ImageSampleLogger(Callback):
    """With run.log_images: a few validation images to W&B once, as pixels with the class
    name as caption. Nothing else about the image (no path, no DICOM header) is sent."""

    def __init__(self, count: int = 8) -> None:
        self.count, self.done = count, False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.done or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.done = True
        x, y = batch[0][: self.count].float().cpu(), batch[1][: self.count].tolist()
        low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        # 8-bit pixels, stretched per image: wandb (0.31) casts float pixels to uint8 without
        # scaling, so [0, 1] floats would arrive as black images.
        pixels = ((x - low) / (high - low + 1e-6) * 255).round().to(torch.uint8)[:, 0].numpy()
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/examples", images=list(pixels), caption=[pl_module.class_names[i] for i in y])
