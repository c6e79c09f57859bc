"""The W&B agent's command line, where it runs (program_root), and the sweep as it will run (another
config, DDP inside each run); slots and the child's environment are rundir's (slots.py, launcher.py).
The argv is built with W&B's own helpers (wandb/sdk/launch/sweeps/utils.py, not a public API:
tests/test_architecture.py fails if they move, and pyproject bounds wandb) plus the lines of
wandb_agent.Agent._command_run that put them together: only a whole `${macro}` item is replaced,
values are str()-formatted as `--name=value`, `${interpreter}` is `python`, `${env}` /usr/bin/env.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Optional

from wandb.sdk.launch.sweeps import utils as sweep_utils

from sweeps.errors import RunnerError
from sweeps.files.build import replace_config


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


def program_root(program: Optional[str], sweep_file: Optional[str]) -> Path:
    """The folder runs start in (the W&B agent starts them in its working directory): the one
    holding the sweep's program, from here or above the sweep file."""
    path = Path(str(program or "cli.py"))
    if path.is_absolute():
        if path.is_file():
            return path.parent
        raise RunnerError(f"program {path} of the sweep does not exist")
    for root in [Path.cwd(), *(Path(sweep_file).resolve().parents if sweep_file else [])]:
        if (root / path).is_file():
            return root.resolve()
    raise RunnerError(f"program {path} of the sweep not found in {Path.cwd()} or above the sweep file; "
                      "run from the repository root")


def prepare_sweep(sweep: dict, cfg: Optional[str], devices: int, nodes: Optional[int] = None) -> dict:
    """The sweep as it will run: `--cfg` swapped in (hyperband brackets checked against that config)
    and, with several devices per node or several nodes (an srun step, slurm.py), Lightning's DDP
    arguments before the sweep's own."""
    if cfg:
        sweep = replace_config(sweep, cfg)
    if devices > 1 or nodes:
        command = [c for c in sweep.get("command") or [] if c != "${args}"]
        ddp = [f"--trainer.num_nodes={nodes}"] if nodes else []
        ddp += [f"--trainer.devices={devices}", "--trainer.strategy=ddp"]
        sweep = dict(sweep, command=[*command, *ddp, "${args}"])
    return sweep
