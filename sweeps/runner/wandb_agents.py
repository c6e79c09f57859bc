"""`python -m sweeps run SWEEP.yaml --backend wandb`: register the sweep with W&B and start one
`wandb agent` per GPU slot (CUDA_VISIBLE_DEVICES), or K agents on CPU."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

from rundir.launcher import child_env, slot_env
from rundir.slots import gpu_slots
from sweeps.errors import UsageError
from sweeps.runner.launch import prepare_sweep


def register(sweep: dict, args: argparse.Namespace, gpus_per_trial: int, instead: str) -> str:
    """The sweep registered with W&B, run_cap = --count (W&B stops handing out runs there); its path."""
    import wandb

    sweep = prepare_sweep(sweep, args.cfg, gpus_per_trial)
    if args.count:
        sweep = dict(sweep, run_cap=args.count)
    try:
        sweep_id = wandb.sweep(sweep, project=args.project, entity=args.entity)
    except Exception as e:  # not logged in, no network, rejected config: say so in one line
        raise UsageError(f"W&B did not register the sweep ({type(e).__name__}: {e}); {instead}") from None
    return "/".join(p for p in (args.entity, args.project, sweep_id) if p)


def run_wandb_sweep(sweep: dict, args: argparse.Namespace) -> int:
    try:
        slots = gpu_slots(args.gpus, args.gpus_per_trial, args.workers, args.trials_per_gpu)
    except ValueError as e:
        raise UsageError(str(e)) from None
    path = register(sweep, args, args.gpus_per_trial,
                    "log in with `wandb login`, or run it offline: python -m sweeps run SWEEP.yaml")
    print(f"registered sweep {path}; starting {len(slots)} agent(s)")
    per_agent = math.ceil(args.count / len(slots)) if args.count else None
    procs = []
    for slot in slots:
        env = child_env(**slot_env(slot, slots))
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
