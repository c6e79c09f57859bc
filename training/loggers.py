"""W&B and CSV logging of a run: never block on the network, always leave CSV metrics."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch import Trainer
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
    """Close the W&B run now rather than at interpreter exit, so that in-process callers
    (tests, notebooks) see a complete run and a second cli_main starts a new one. Only a run
    that was started is finished: `wandb.run` is W&B's public handle of the current run."""
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
