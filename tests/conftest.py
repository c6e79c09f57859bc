"""Shrink every run: CPU, tiny synthetic images, one short epoch, no workers, output in tmp_path,
W&B offline or disabled (never the network)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))

TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.num_workers=0",
    "--data.image_size=32",
    "--data.batch_size=8",
    "--run.wandb=disabled",
]


def pytest_configure(config):
    """Under `pytest -n N` (make test), the N workers split the cores as parallel runs do: N
    processes that each start one torch thread per core slow each other down (measured on two
    cores: 4 min 22 s with two threads per worker, 3 min 49 s with one; 6 min 11 s serially)."""
    from rundir.slots import cpu_threads

    threads = cpu_threads([None] * int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = threads


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("XRAY_RUN_DIR", raising=False)
    from sweeps.contract.signals import StopSignal

    StopSignal.reset()
    yield
    StopSignal.reset()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def hand_data(tmp_path_factory) -> Path:
    """48 synthetic hand radiographs, 64 px, with a manifest (path,label,patient_id)."""
    from datamodules.synthetic import generate

    root = tmp_path_factory.mktemp("data") / "hand"
    generate(root, body_part="hand", count=48, size=(64, 64), seed=3)
    return root


@pytest.fixture
def fit_args(hand_data, tmp_path):
    """fit arguments for a tiny run of `config` on the synthetic data, writing into tmp_path."""

    def make(config: str = "configs/demo.yaml", *extra: str, subcommand: str = "fit") -> list[str]:
        return [
            subcommand,
            "--config",
            str(config),
            f"--data.root={hand_data}",
            "--demo.body_part=null",
            f"--run.root={tmp_path / 'runs'}",
            *TINY,
            *extra,
        ]

    return make


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs").glob("*/*") if p.is_dir())


PYTHON = sys.executable


def parse_cli(argv: list[str]):
    """Parse a command line with the real CLI's parser, instantiating and running nothing
    (LightningCLI's `run=False`: a parser without subcommands, so a leading one is dropped and
    the subcommand's own arguments, such as fit's ckpt_path, are not accepted); returns the config."""
    from datamodules.datamodule import XrayDataModule
    from models.classifier import XrayClassifier
    from training.cli import XrayCLI

    class _ParseOnly(XrayCLI):
        def before_instantiate_classes(self) -> None: ...

        def instantiate_classes(self) -> None: ...

    args = argv[1:] if argv and argv[0] in XrayCLI.subcommands() else argv
    return _ParseOnly(XrayClassifier, XrayDataModule, args=args, run=False, auto_configure_optimizers=False).config
