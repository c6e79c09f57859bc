"""The one implementation of the W&B agent's command line, used by the offline runner and
the tests: macros are replaced only when a whole command item is `${name}`, and sweep
values are formatted with str() as `--name=value` (wandb/sdk/launch/sweeps/utils.py)."""

from __future__ import annotations

import os
from typing import Any

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


def format_args(params: dict[str, Any]) -> list[str]:
    return [f"--{name}={value}" for name, value in params.items()]


def agent_argv(sweep: dict, params: dict[str, Any]) -> list[str]:
    """The argv the W&B agent runs for one sampled point `params` ({name: value})."""
    macros = {
        "${env}": ["/usr/bin/env"] if os.name != "nt" else [],
        "${interpreter}": ["python"],  # the `python` on PATH, as the agent does
        "${program}": [sweep.get("program", "")],
        "${args}": format_args(params),
        "${args_no_hyphens}": [f"{k}={v}" for k, v in params.items()],
    }
    argv: list[str] = []
    for item in sweep.get("command") or DEFAULT_COMMAND:
        argv += macros.get(item, [item])
    return argv


def cli_args(argv: list[str]) -> list[str]:
    """The part of an agent argv that cli.py receives (after `python cli.py`)."""
    for i, item in enumerate(argv):
        if item.endswith(".py"):
            return argv[i + 1 :]
    raise ValueError(f"no program (*.py) in command {argv}")
