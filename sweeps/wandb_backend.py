"""`python -m sweeps run SWEEP.yaml --backend wandb`: the old tool's one-command W&B flow.

Registers the sweep with W&B and starts one `wandb agent` per GPU (CUDA_VISIBLE_DEVICES),
or K agents on CPU. Each agent runs the sweep's command, i.e. `python cli.py fit ...`.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

from sweeps.config import replace_config


def gpu_slots(gpus: str | None, gpus_per_trial: int, workers: int | None) -> list[str | None]:
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


def run_wandb_sweep(sweep: dict, args: argparse.Namespace) -> int:
    import wandb

    if args.cfg:
        sweep = replace_config(sweep, args.cfg)
    if args.gpus_per_trial > 1:
        sweep = dict(sweep, command=[c for c in sweep["command"] if c != "${args}"]
                     + [f"--trainer.devices={args.gpus_per_trial}", "--trainer.strategy=ddp", "${args}"])
    slots = gpu_slots(args.gpus, args.gpus_per_trial, args.workers)
    sweep_id = wandb.sweep(sweep, project=args.project, entity=args.entity)
    path = "/".join(p for p in (args.entity, args.project, sweep_id) if p)
    print(f"registered sweep {path}; starting {len(slots)} agent(s)")
    per_agent = math.ceil(args.count / len(slots)) if args.count else None
    procs = []
    for slot in slots:
        env = dict(os.environ)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        cmd = [sys.executable, "-m", "wandb", "agent", *(["--count", str(per_agent)] if per_agent else []), path]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()  # agents forward the stop to their runs
        codes = [p.wait() for p in procs]
    print(f"agents finished; results: python -m sweeps best {path}")
    return max(codes, default=0)
