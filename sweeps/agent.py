"""The one implementation of the W&B agent's command line, used by the offline runner and
the tests. It calls W&B's own helpers (wandb/sdk/launch/sweeps/utils.py) and repeats the
few lines of wandb_agent.Agent._command_run that put them together: a command item is
replaced only when it is a whole `${macro}`, values are formatted with str() as
`--name=value`, `${interpreter}` is the `python` on PATH and `${env}` is /usr/bin/env."""

from __future__ import annotations

import platform
from typing import Any

from wandb.sdk.launch.sweeps import utils as sweep_utils


def agent_argv(sweep: dict, params: dict[str, Any], *, args_json_file: str = "") -> list[str]:
    """The argv the W&B agent runs for one sampled point `params` ({name: value})."""
    command = sweep_utils.create_sweep_command(list(sweep.get("command") or []) or None)
    macros: dict[str, Any] = sweep_utils.create_sweep_command_args(
        {"args": {name: {"value": value} for name, value in params.items()}}
    )
    macros["interpreter"] = ["python"]
    macros["program"] = [sweep.get("program", "")]
    macros["args_json_file"] = [args_json_file]
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for item in command:
        item = str(item)
        if item.startswith("${") and item.endswith("}"):
            argv += macros.get(item[2:-1]) or []
        else:
            argv.append(item)
    return argv


def cli_args(argv: list[str]) -> list[str]:
    """The part of an agent argv that cli.py receives (after `python cli.py`)."""
    for i, item in enumerate(argv):
        if item.endswith(".py"):
            return argv[i + 1 :]
    raise ValueError(f"no program (*.py) in command {argv}")
