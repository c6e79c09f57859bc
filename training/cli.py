"""XrayCLI: the LightningCLI of this project, importable without side effects; tests and
notebooks call `cli_main(args)` (README, "Run directories and logging")."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.datamodule import XrayDataModule
from datamodules.demo import ensure_demo_data
from evaluation import check_columns
from models.classifier import XrayClassifier
from models.teaching import explainer
from rundir import CHILD_STOP_S, RUN_DIR_ENV, check_gpu_slot, continue_from, default_precision, run_dir_for
from rundir.layout import BEST_CHECKPOINT, CHECKPOINT_DIR, HISTORY_FILE, LAST_CHECKPOINT
from sweeps.contract.conditions import apply_conditions
from sweeps.contract.groups import LINKS, added_groups
from sweeps.contract.guard import RunGuard, RunStopped
from sweeps.contract.lifeline import watch_runner
from sweeps.contract.lightning_adapter import ddp_children
from sweeps.contract.metric import SweepMetric
from sweeps.contract.signals import StopSignal
from training.cv import cross_validate, save_fold_outputs
from training.ensemble import check_weights_fit, predict_with_ensemble, read_cv_run
from training.evaluate import Evaluation, PredictionWriter
from training.external import TestPlan, external_records
from training.loggers import ImageSampleLogger, default_loggers, finish_wandb
from training.options import check_renamed

log = logging.getLogger("cli")
_CREATED_RUN_DIRS: list[Path] = []  # removed again when a run fails before writing anything
_PRINT_CONFIG = "--print_config"


def _quiet_expected_warnings() -> None:
    # The run directory also holds config.yaml and wandb/; CSVLogger only writes metrics.csv there.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # Every run has its own directory, so a checkpoint from another run always "changes dirpath".
    warnings.filterwarnings("ignore", message="The dirpath has changed from")
    # A run continued from its last.ckpt writes into its own checkpoints/ again.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # Under DDP: val/* and test/* are already global (training.evaluate), deliberately not synced.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/")


def _check_config_files(args: list[str]) -> None:
    """Name the file when a --config is not valid YAML (jsonargparse only says where in it)."""
    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c") and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as e:
                raise ValueError(f"config file {value} is not valid YAML: {e}") from None


def _stoppable(subcommand: Callable) -> Callable:
    """Every subcommand runs through here: a stop before its start (the body never runs) or during
    it ends the run cleanly, exit 0 (README, "How the sweep files work with LightningCLI"): logs
    closed as finished, no DDP child left behind. RUN_DIR_ENV, set for our DDP children, is taken back."""

    @functools.wraps(subcommand)
    def run(cli: XrayCLI, *args, **kwargs) -> None:
        try:
            if StopSignal.requested:
                raise RunStopped(f"stopped by {StopSignal.reason} before training started")
            subcommand(cli, *args, **kwargs)
            finish_wandb(cli.trainer, exit_code=0)
        except RunStopped:
            cli.stopped = True
            log.warning("Run stopped by %s; last checkpoint in %s", StopSignal.reason,
                        cli.run_dir / CHECKPOINT_DIR)
            if cli.guard.training_done:
                log.warning("Training had ended; the test after fit was skipped because the run was stopped "
                            "(it did not finish within %.0f s of the stop)", cli.guard.finish_grace_s)
            for logger in cli.trainer.loggers:
                logger.save()
            finish_wandb(cli.trainer, exit_code=0)
            for proc in ddp_children(cli.trainer):
                try:
                    proc.wait(timeout=CHILD_STOP_S)
                except Exception:
                    proc.kill()
        finally:
            if getattr(cli, "_set_env", False):
                os.environ.pop(RUN_DIR_ENV, None)

    return run


class XrayCLI(LightningCLI):
    run_dir: Path
    stopped = False

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for group, cls in added_groups():  # the one list of groups and links: sweeps/contract/groups.py
            parser.add_class_arguments(cls, group)
        for source, target in LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        args = list(sys.argv[1:] if args is None else args)
        _check_config_files(args)
        check_renamed(args)
        # --print_config prints and exits inside parse_args: hold it back until the
        # conditions are applied, so that it shows what the run will use.
        without_print = [a for a in args if a.partition("=")[0] != _PRINT_CONFIG]
        printing = len(without_print) < len(args)
        self.config = parser.parse_args(without_print)
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        kept, dropped = apply_conditions(args, cfg)
        self.args = [a for a in kept if a.partition("=")[0] != _PRINT_CONFIG]
        for note in dropped:
            log.warning("sweep: %s", note)
        if dropped or printing:
            self.config = parser.parse_args(kept)
        self._resume_from = None
        if sub == "fit" and self.config[sub].get("ckpt_path"):
            # Continue that run (its directory may already hold config.yaml), before LightningCLI
            # reads the checkpoint's hyperparameters.
            fit = self.config[sub]
            self._resume_from = str(fit.ckpt_path)
            self.save_config_kwargs = {**self.save_config_kwargs, "overwrite": True}
            fit.ckpt_path = continue_from(self._resume_from, fit.model.as_dict())

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        self.cross_validating = self.subcommand == "fit" and cfg.cv.folds >= 2
        if self.cross_validating:
            # This process only runs the folds (each a process of its own) and logs their mean.
            self.fold_devices = (cfg.trainer.get("accelerator"), cfg.trainer.get("devices"))
            if cfg.data.get("fold") is not None:
                raise ValueError(f"cv.folds trains every fold; data.fold={cfg.data.fold} trains one: give one of them")
            cfg.data.folds, cfg.trainer.devices, cfg.trainer.strategy = cfg.cv.folds, 1, "auto"
        configs = cfg.get("config") or []
        experiment = cfg.run.experiment or (Path(str(configs[0])).stem if configs else "default")
        self.run_dir, made = run_dir_for(fit=self.subcommand == "fit", continuing=self._resume_from,
                                         root=Path(cfg.run.root), experiment=experiment, name=cfg.run.name)
        if made:
            _CREATED_RUN_DIRS.append(self.run_dir)
        if not os.environ.get(RUN_DIR_ENV):  # DDP children re-run this script; they must find the same directory
            os.environ[RUN_DIR_ENV] = str(self.run_dir)
            self._set_env = True
        cfg.trainer.default_root_dir = str(self.run_dir)
        ensure_demo_data(cfg.data.root, cfg.demo, seed=cfg.data.split_seed)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        cfg = self.config_init[self.subcommand]
        run, sweep = cfg.run, cfg.sweep
        if cfg.trainer.get("precision") is None:
            kwargs["precision"] = default_precision(cfg.trainer.get("accelerator", "auto"))
        if (loggers := cfg.trainer.get("logger")) is None or loggers is True:
            kwargs["logger"] = default_loggers(run, self.run_dir)
        checkpoints = self.run_dir / CHECKPOINT_DIR
        self.checkpoint = ModelCheckpoint(checkpoints, BEST_CHECKPOINT, monitor=run.monitor, mode=run.monitor_mode)
        # last.ckpt: the latest epoch. Not save_last=True: since Lightning 2.6 that writes last.ckpt
        # only when a best checkpoint is written at the same step, i.e. it stays the best epoch.
        self.last_checkpoint = ModelCheckpoint(checkpoints, Path(LAST_CHECKPOINT).stem, monitor=None,
                                               enable_version_counter=False)
        metric = sweep.metric or run.monitor
        self.guard = RunGuard(checkpoints)
        check_columns(cfg.eval.subgroups, self.datamodule.records, self.datamodule.source)  # before training
        self.evaluation = Evaluation(self.run_dir, cfg.eval)
        callbacks: list[Callback] = [
            self.checkpoint,
            self.last_checkpoint,
            self.guard,
            self.evaluation,  # before SweepMetric, which reads its metrics
            SweepMetric(metric, sweep.objective, self.run_dir / HISTORY_FILE, metrics=self.evaluation),
        ]
        if not cfg.cv.run_dir:  # a fold ensemble writes its predictions itself, once all folds predicted
            callbacks.append(PredictionWriter(self.run_dir, self.evaluation))
        if run.log_images:
            callbacks.append(ImageSampleLogger())
        if cfg.eval.explain:  # Grad-CAM: predict's per image, test's images chosen to teach (models/teaching.py)
            ensemble = read_cv_run(Path(cfg.cv.run_dir)) if self.subcommand == "predict" and cfg.cv.run_dir else None
            callbacks.append(explainer(self.subcommand, self.run_dir, self.evaluation, ensemble, run.log_images))
        user_callbacks = cfg.trainer.get("callbacks") or []
        if not isinstance(user_callbacks, list):  # `--trainer.callbacks=pkg.Callback` gives one
            user_callbacks = [user_callbacks]
        kwargs["callbacks"] = [*user_callbacks, *callbacks]
        return super().instantiate_trainer(**kwargs)

    # ---- the subcommands: LightningCLI runs a method named like the subcommand when the CLI has one

    @_stoppable
    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        """Train; then the operating point stored with the best weights, and the test on them."""
        external_records(self)  # a bad eval.external fails now, not after training
        if self.cross_validating:
            cross_validate(self, self.fold_devices)
            return
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        if self.trainer.fast_dev_run or self.trainer.interrupted:
            return
        best = self.checkpoint.best_model_path or None
        self.evaluation.use_operating_point_of(self.trainer, model, datamodule, best)
        if self.config_init["fit"].run.test_after_fit and datamodule.has_split("test"):
            if StopSignal.requested and not self.guard.grace_left():
                raise RunStopped(f"stopped by {StopSignal.reason} after training; the test after fit was "
                                 "skipped")
            self.trainer.test(model, datamodule=datamodule, ckpt_path=best)
        if datamodule.hparams.fold is not None:  # a fold of a cross-validated run: outputs for the parent
            self.evaluation.collect_validation(self.trainer, model, datamodule, best)
            if self.trainer.is_global_zero:
                save_fold_outputs(self)
        TestPlan(self, best).finish()  # the model card (and an external test) beside test_report.json

    @_stoppable
    def validate(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        check_weights_fit(model, ckpt_path)
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    @_stoppable
    def test(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        plan = TestPlan(self, ckpt_path)  # checked before anything runs: same data, external set, CV run
        if plan.cv_run is None:  # a CV run's internal test is its ensemble's, already in its report
            check_weights_fit(model, ckpt_path)
            self.evaluation.use_operating_point_of(self.trainer, model, datamodule, ckpt_path)
            self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        plan.finish()

    @_stoppable
    def predict(self, model, datamodule=None, ckpt_path=None, **kwargs) -> None:
        if self.config_init["predict"].cv.run_dir:
            self.evaluation.point = predict_with_ensemble(self, Path(self.config_init["predict"].cv.run_dir))
            return
        check_weights_fit(model, ckpt_path)
        self.evaluation.use_operating_point_of(self.trainer, model, datamodule, ckpt_path)
        self.trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)


def cli_main(args: Optional[list[str]] = None) -> XrayCLI:
    StopSignal.install()
    watch_runner()  # started by the offline runner: stop when it is gone
    check_gpu_slot()  # given a GPU that it cannot see: fail now, not train on the CPU
    _quiet_expected_warnings()
    try:
        return XrayCLI(
            XrayClassifier,
            XrayDataModule,
            args=args,
            seed_everything_default=42,
            auto_configure_optimizers=False,
            trainer_defaults={"log_every_n_steps": 10},
            # Raise instead of printing the whole usage: training.program.main prints one paragraph.
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
