"""What the offline runner and the W&B backend share when they start runs: the sweep as it
will run (another config, DDP inside each run), the GPU slots, and the child environment."""

from __future__ import annotations

import os
import sys
from typing import Optional

from sweeps.config import replace_config


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


def gpu_slots(gpus: Optional[str], gpus_per_trial: int, workers: Optional[int]) -> list[Optional[str]]:
    """CUDA_VISIBLE_DEVICES value for each worker (None: leave the environment alone)."""
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if not ids:
        return [None] * max(1, workers or 1)
    groups = [ids[i : i + gpus_per_trial] for i in range(0, len(ids) - gpus_per_trial + 1, gpus_per_trial)]
    if not groups:
        raise ValueError(f"--gpus-per-trial {gpus_per_trial} is more than the {len(ids)} GPU(s) given")
    if workers:
        groups = groups[:workers]
    return [",".join(g) for g in groups]


def child_env(**extra: Optional[str]) -> dict[str, str]:
    """The environment of a run or an agent: ours, with this interpreter's directory first on
    PATH, since the agent runs `/usr/bin/env python` (a venv that is not activated, too)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update({k: v for k, v in extra.items() if v is not None})
    return env
