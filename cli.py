"""LightningCLI entry point: `python cli.py fit --config configs/ra_hand.yaml`.

Every run writes into its own directory runs/<experiment>/<run id>/ (config.yaml,
checkpoints/, metrics.csv, wandb/). W&B logs offline unless the run is under a W&B agent or
the user asks for online and is logged in; CSV metrics are always written.
"""

from __future__ import annotations

from sweeps.stop import StopSignal  # first: a SIGTERM during the heavy imports below ends cleanly

StopSignal.install()

import contextlib
import logging
import netrc
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional
from urllib.parse import urlparse

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from datamodules.datamodule import XrayDataModule
from datamodules.readers import ImageReadError
from datamodules.records import DataError
from models.backbones import UnknownBackboneError, WeightsError
from models.classifier import XrayClassifier
from models.reporting import ConfusionWriter, ImageSampleLogger, PredictionWriter
from sweeps.callbacks import Diverged, RunGuard, RunStopped, SweepMetric
from sweeps.conditions import apply_conditions
from sweeps.history import HISTORY_FILE

log = logging.getLogger("cli")
# The run directory also holds config.yaml and wandb/; CSVLogger only writes metrics.csv there.
warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
# Every run has its own directory, so a checkpoint from another run always "changes dirpath".
warnings.filterwarnings("ignore", message="The dirpath has changed from")

RUN_DIR_ENV = "XRAY_RUN_DIR"  # set by the offline runner, and by rank 0 for its DDP children
_CREATED_RUN_DIRS: list[Path] = []  # removed again when a run fails before writing anything
USER_ERRORS = (DataError, ImageReadError, UnknownBackboneError, WeightsError, FileNotFoundError)


@dataclass
class RunOptions:
    """Where a run writes and how it logs.

    Args:
        root: runs go to root/<experiment>/<name>/.
        experiment: default: the stem of the first --config file.
        name: run directory name; default: W&B run id under an agent, else a timestamp.
            A taken name gets a suffix, so a second identical command never collides.
        wandb: auto (online under a W&B agent, else offline), online (falls back to offline
            when not logged in), offline (sync later with `wandb sync`), or disabled.
        project: W&B project; default: $WANDB_PROJECT, else xray-classifier.
        entity: W&B entity (team or user); default: the logged-in user's.
        monitor: metric that selects the best checkpoint.
        monitor_mode: max or min.
        test_after_fit: evaluate the best checkpoint on the test split after fit.
        log_images: log a few validation images to W&B (pixels only, never DICOM headers).
    """

    root: str = "runs"
    experiment: Optional[str] = None
    name: Optional[str] = None
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: Optional[str] = None
    entity: Optional[str] = None
    monitor: str = "val/auroc"
    monitor_mode: Literal["max", "min"] = "max"
    test_after_fit: bool = True
    log_images: bool = False


@dataclass
class SweepOptions:
    """Settings that sweep files put on the command line.

    Args:
        metric: the sweep metric, logged once per validation epoch (sweep_history.jsonl too).
        objective: weights of a combined objective logged as `metric`, e.g.
            {"val/auroc": 0.5, "val/balanced_acc": 0.5}.
        when: conditional parameters "CHILD:PARENT=V1|V2": CHILD's command-line value is
            applied only when PARENT has one of the values (W&B sweeps have no conditions).
    """

    metric: Optional[str] = None
    objective: Optional[dict[str, float]] = None
    when: Optional[list[str]] = None


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


def check_config_files(args: list[str]) -> None:
    """Name the file when a --config is not valid YAML (jsonargparse only says where in it)."""
    import yaml

    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c") and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as e:
                raise ValueError(f"config file {value} is not valid YAML: {e}") from None


def default_precision() -> str:
    """bf16 autocast on GPUs that support it (fast, no loss scaling), full precision elsewhere."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def make_run_dir(root: Path, experiment: str, name: Optional[str]) -> Path:
    """A fresh directory for this run; never reuses one (SaveConfigCallback would refuse it)."""
    base = name or os.environ.get("WANDB_RUN_ID") or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    (root / experiment).mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        candidate = root / experiment / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()  # atomic: concurrent runs never share a directory
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"Too many runs named {base} under {root / experiment}")


class XrayCLI(LightningCLI):
    run_dir: Path
    stopped = False
    dropped_conditionals: list[str]

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.add_class_arguments(SweepOptions, "sweep")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.class_weights", "model.class_weights", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        args = list(sys.argv[1:] if args is None else args)
        check_config_files(args)
        self.config = parser.parse_args(args)
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        kept, self.dropped_conditionals = apply_conditions(args, cfg)
        if self.dropped_conditionals:
            for note in self.dropped_conditionals:
                log.warning("sweep: %s", note)
            self.config = parser.parse_args(kept)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        inherited = os.environ.get(RUN_DIR_ENV)
        if inherited:
            self.run_dir = Path(inherited)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            configs = cfg.get("config") or []
            experiment = cfg.run.experiment or (Path(str(configs[0])).stem if configs else "default")
            self.run_dir = make_run_dir(Path(cfg.run.root), experiment, cfg.run.name)
            _CREATED_RUN_DIRS.append(self.run_dir)
            # DDP children re-run this script; they must find the same directory.
            os.environ[RUN_DIR_ENV] = str(self.run_dir)
            self._set_env = True
        cfg.trainer.default_root_dir = str(self.run_dir)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        cfg = self.config_init[self.subcommand]
        run, sweep = cfg.run, cfg.sweep
        if cfg.trainer.get("precision") is None:
            kwargs["precision"] = default_precision()
        loggers = cfg.trainer.get("logger")
        if loggers is None or loggers is True:
            kwargs["logger"] = self._default_loggers(run)
        self.checkpoint = ModelCheckpoint(
            dirpath=self.run_dir / "checkpoints",
            filename="best-{epoch:03d}",
            monitor=run.monitor,
            mode=run.monitor_mode,
            save_last=True,
        )
        metric = sweep.metric or run.monitor
        callbacks: list[Callback] = [
            self.checkpoint,
            RunGuard(self.run_dir / "checkpoints"),
            SweepMetric(metric, sweep.objective, self.run_dir / HISTORY_FILE),
            ConfusionWriter(self.run_dir),
            PredictionWriter(self.run_dir),
        ]
        if run.log_images:
            callbacks.append(ImageSampleLogger())
        user_callbacks = cfg.trainer.get("callbacks") or []
        if not isinstance(user_callbacks, list):  # `--trainer.callbacks=pkg.Callback` gives one
            user_callbacks = [user_callbacks]
        kwargs["callbacks"] = [*user_callbacks, *callbacks]
        return super().instantiate_trainer(**kwargs)

    def _default_loggers(self, run: RunOptions) -> list[Logger]:
        loggers: list[Logger] = []
        mode = resolve_wandb_mode(run.wandb)
        if mode != "disabled":
            loggers.append(
                WandbLogger(
                    save_dir=str(self.run_dir),
                    project=run.project or os.environ.get("WANDB_PROJECT") or "xray-classifier",
                    entity=run.entity,
                    name=f"{self.run_dir.parent.name}/{self.run_dir.name}",
                    mode=mode,
                    log_model=False,
                )
            )
        loggers.append(CSVLogger(save_dir=str(self.run_dir), name="", version=""))
        return loggers

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            if StopSignal.requested:
                raise RunStopped("SIGTERM before training started")
            super()._run_subcommand(subcommand)
            self._finish_wandb(exit_code=0)
        except RunStopped:
            self.stopped = True
            self._finish_stopped_run()
        finally:
            if getattr(self, "_set_env", False):
                os.environ.pop(RUN_DIR_ENV, None)

    def _finish_wandb(self, exit_code: int) -> None:
        """Close the W&B run now rather than at interpreter exit, so that in-process callers
        (tests, notebooks) see a complete run and a second cli_main starts a new one."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and self.trainer.is_global_zero and logger._experiment is not None:
                logger.experiment.finish(exit_code=exit_code)

    def _finish_stopped_run(self) -> None:
        """The agent stopped us: close the logs as finished and leave no DDP child behind."""
        trainer = self.trainer
        log.warning("Run stopped by SIGTERM; last checkpoint in %s", self.run_dir / "checkpoints")
        for logger in trainer.loggers:
            logger.save()
        self._finish_wandb(exit_code=0)
        for proc in getattr(trainer.strategy.launcher, "procs", []) or []:
            try:
                proc.wait(timeout=20)
            except Exception:
                proc.kill()

    def after_fit(self) -> None:
        if not self.config_init[self.subcommand].run.test_after_fit or not self.datamodule.has_split("test"):
            return
        best = self.checkpoint.best_model_path if not self.trainer.fast_dev_run else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def cli_main(args: Optional[list[str]] = None) -> XrayCLI:
    StopSignal.install()
    try:
        return XrayCLI(
            XrayClassifier,
            XrayDataModule,
            args=args,
            seed_everything_default=42,
            auto_configure_optimizers=False,
            trainer_defaults={"log_every_n_steps": 10},
            # Raise instead of printing the whole usage: main() prints one paragraph.
            parser_kwargs={"exit_on_error": False},
        )
    except BaseException:
        for run_dir in _CREATED_RUN_DIRS:
            if os.environ.get(RUN_DIR_ENV) == str(run_dir):
                del os.environ[RUN_DIR_ENV]  # ours, meant for our DDP children only
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if still empty: never delete what a run wrote
        raise
    finally:
        _CREATED_RUN_DIRS.clear()


def main() -> int:
    try:
        cli_main()
    except ArgumentError as e:
        print(f"error: {e}\n(options: python cli.py fit --help)", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except MemoryError as e:  # torch.OutOfMemoryError is not one; caught below by name
        print(f"error: out of memory: {e}", file=sys.stderr)
        return 4
    except RuntimeError as e:
        if type(e).__name__ != "OutOfMemoryError":
            raise
        print(f"error: out of GPU memory ({e}); lower data.batch_size or data.image_size, "
              "or use --trainer.precision=bf16-mixed", file=sys.stderr)
        return 4
    except (*USER_ERRORS, ValueError, MisconfigurationException) as e:
        # One paragraph a user can act on; XRAY_DEBUG=1 shows the traceback.
        if os.environ.get("XRAY_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
