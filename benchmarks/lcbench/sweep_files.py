"""Sweep files for the LCBench surrogate program, written by the project's own generator
(sweeps.files.create_custom_sweep_config) so that they are W&B-valid and run as any sweep does."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from benchmarks.lcbench.surrogate import SPACE
from sweeps.files import create_custom_sweep_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROGRAM = (HERE / "surrogate_cli.py").relative_to(ROOT).as_posix()
CONFIG = (HERE / "lcbench.yaml").relative_to(ROOT).as_posix()
METRIC = "val/balanced_acc"  # LCBench predicts balanced accuracy on validation and test: the incumbent's test is known


def lcbench_sweep(method: str = "bayes", early_terminate: Optional[dict] = None, *, task: str = "3945",
                  surrogate: str = "lcbench", minute_s: float = 0.1, max_epochs: int = 52) -> dict:
    """A sweep over LCBench's space on one instance. The generator checks the project's names
    (model.*, data.*); the architecture knobs and the benchmark's options are `lcbench.*`
    parameters added after it (W&B accepts any parameter name; surrogate_cli.py reads them)."""
    project = {k: v for k, v in SPACE.items() if not k.startswith("lcbench.")}
    sweep = create_custom_sweep_config(
        method=method, name=f"lcbench-{task}-{method}", metric_name=METRIC, config=CONFIG,
        parameters={**project, "trainer.max_epochs": {"value": max_epochs}}, early_terminate=early_terminate)
    own = {k: v for k, v in SPACE.items() if k.startswith("lcbench.")}
    own.update({"lcbench.task": {"value": str(task)}, "lcbench.surrogate": {"value": surrogate},
                "lcbench.minute_s": {"value": minute_s}})
    return dict(sweep, program=PROGRAM, parameters=dict(sorted({**sweep["parameters"], **own}.items())))
