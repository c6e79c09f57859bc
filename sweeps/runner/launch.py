"""Launching a run: the one implementation of the W&B agent's command line, the sweep as it
will run (another config, DDP inside each run), the GPU slots and the child environment.
Used by the offline runner, the W&B-agents backend and the tests.

The argv is built with W&B's own helpers (wandb/sdk/launch/sweeps/utils.py, not a public
API: tests/test_adapters.py fails if they move, and pyproject bounds wandb) plus the few lines
of wandb_agent.Agent._command_run that put them together: a command item is replaced only
when it is a whole `${macro}`, values are formatted with str() as `--name=value`,
`${interpreter}` is the `python` on PATH and `${env}` is /usr/bin/env.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Optional

from wandb.sdk.launch.sweeps import utils as sweep_utils

from sweeps.files.build import replace_config
from sweeps.runner.placement import parse_visible_devices


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


def prepare_sweep(sweep: dict, cfg: Optional[str], gpus_per_trial: int) -> dict:
    """The sweep as it will run: `--cfg` swapped in (hyperband brackets checked against that
    config) and, with several GPUs per run, DDP arguments before the sweep's own."""
    if cfg:
        sweep = replace_config(sweep, cfg)
    if gpus_per_trial > 1:
        command = [c for c in sweep.get("command") or [] if c != "${args}"]
        ddp = [f"--trainer.devices={gpus_per_trial}", "--trainer.strategy=ddp"]
        sweep = dict(sweep, command=[*command, *ddp, "${args}"])
    return sweep


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as CUDA names them to a child: the inherited
    CUDA_VISIBLE_DEVICES list when set (SLURM, Kubernetes and most schedulers set it to the
    allocation, e.g. `2,3`, or to UUIDs), else every device torch sees."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        return parse_visible_devices(inherited)
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(gpus: Optional[str], gpus_per_trial: int, workers: Optional[int],
              trials_per_gpu: int = 1) -> list[Optional[str]]:
    """CUDA_VISIBLE_DEVICES value for each worker slot (None: leave the environment alone).

    `gpus` ("0,1") indexes into the visible GPUs, so `--gpus 0` under an inherited
    CUDA_VISIBLE_DEVICES=2,3 is physical GPU 2, never a GPU outside the allocation. Each GPU
    group appears `trials_per_gpu` times (several small runs share one GPU)."""
    visible = visible_gpus()
    if gpus:
        try:
            wanted = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise ValueError(f"--gpus {gpus!r}: give indexes such as 0,1 into the visible GPUs {visible}") from None
        inherited = os.environ.get("CUDA_VISIBLE_DEVICES") is not None
        if inherited:
            bad = [i for i in wanted if not 0 <= i < len(visible)]
            if bad:
                raise ValueError(f"--gpus {gpus}: index(es) {bad} outside the {len(visible)} GPU(s) of "
                                 f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} (--gpus indexes into it)")
            ids = [visible[i] for i in wanted]
        else:
            ids = [str(i) for i in wanted]
    else:
        ids = visible
    if not ids:
        return [None] * max(1, workers or 1)
    groups = [ids[i : i + gpus_per_trial] for i in range(0, len(ids) - gpus_per_trial + 1, gpus_per_trial)]
    if not groups:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial} is more than the {len(ids)} GPU(s) given")
    slots = [",".join(g) for _ in range(max(1, trials_per_gpu)) for g in groups]
    return slots[:workers] if workers else slots


def child_env(**extra: Optional[str]) -> dict[str, str]:
    """The environment of a run or an agent: ours, with this interpreter's directory first on
    PATH, since the agent runs `/usr/bin/env python` (a venv that is not activated, too)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update({k: v for k, v in extra.items() if v is not None})
    return env
