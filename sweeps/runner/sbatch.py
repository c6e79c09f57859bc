"""`python -m sweeps slurm SWEEP.yaml --array N ...`: a sweep as one SLURM job array (README,
"Sweeps on SLURM"): writes the sbatch script into the sweep directory, shows it, submits it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from rundir.atomic import write_atomic
from sweeps.errors import UsageError
from sweeps.runner.command import sweep_place
from sweeps.runner.journal import JOURNAL_SCHEME, journal_file, sqlite_problem
from sweeps.runner.launch import program_root
from sweeps.runner.slurm import REQUEUE_SIGNAL
from sweeps.runner.wandb_agents import register

PROJECT = Path(__file__).resolve().parents[2]  # `python -m sweeps` runs from here (not installed)
WARN_S = 90  # SIGUSR1 this long before the time limit: time to save last.ckpt and requeue


def _runner_command(args: argparse.Namespace, sweep_file: Path, sweep_dir: Path, storage: str) -> list[str]:
    cmd = [sys.executable, "-m", "sweeps", "run", str(sweep_file), "--out", str(sweep_dir),
           "--storage", storage, "--quiet"]
    for flag, value in (("--cfg", args.cfg), ("--count", args.count), ("--heartbeat", args.heartbeat),
                        ("--seed", args.seed), ("--project", args.project), ("--entity", args.entity)):
        if value is not None:
            cmd += [flag, str(value)]
    if hasattr(args, "keep_checkpoints"):  # None: `all`
        cmd += ["--keep-checkpoints", str(args.keep_checkpoints or "all")]
    if args.nodes_per_trial:
        cmd += ["--nodes-per-trial", str(args.nodes_per_trial), "--tasks-per-node", str(_tasks_per_node(args)),
                "--gpus-per-trial", str(max(1, args.gpus_per_task))]
    return cmd


def _tasks_per_node(args: argparse.Namespace) -> int:
    return args.tasks_per_node or args.gpus_per_task or 1


def render(args: argparse.Namespace, name: str, sweep_file: Path, sweep_dir: Path, storage: str,
           sweep_id: Optional[str] = None) -> str:
    """The sbatch script; every choice in it is commented for the user who reads it."""
    log = sweep_dir / "slurm" / "%A_%a.out"
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --array=0-{args.array - 1}",
             f"#SBATCH --output={log}", "#SBATCH --open-mode=append  # a requeued task appends to its log",
             f"#SBATCH --signal=B:{REQUEUE_SIGNAL.name[3:]}@{WARN_S}  # before the time limit: save last.ckpt, "
             "requeue",
             "#SBATCH --requeue  # preemption and `scontrol requeue` put the task back in the queue"
             if args.requeue else "#SBATCH --no-requeue"]
    if args.nodes_per_trial:
        lines += [f"#SBATCH --nodes={args.nodes_per_trial}", f"#SBATCH --ntasks-per-node={_tasks_per_node(args)}"]
    else:
        lines += ["#SBATCH --nodes=1"]
    if args.gpus_per_task:
        lines += [f"#SBATCH --gres=gpu:{args.gpus_per_task}"]
    for option, value in (("cpus-per-task", args.cpus_per_task), ("partition", args.partition),
                          ("time", args.time)):
        if value is not None:
            lines.append(f"#SBATCH --{option}={value}")
    lines += [f"#SBATCH {option}" for option in args.sbatch]
    lines += ["", f"cd {shlex.quote(str(PROJECT))}"]
    if args.backend == "wandb":
        agent = shlex.join([sys.executable, "-m", "wandb", "agent", str(sweep_id)])
        lines += [f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH  # the agents run `python`",
                  "# one W&B agent per GPU of this task; they exit when the sweep reaches its run cap",
                  'IFS=, read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-}"',
                  '[ ${#gpus[@]} -gt 0 ] || gpus=("")',
                  f'for g in "${{gpus[@]}}"; do CUDA_VISIBLE_DEVICES=$g {agent} & done',
                  "trap 'kill -INT $(jobs -p) 2>/dev/null' USR1 TERM  # agents stop their runs",
                  "wait; wait"]
        return "\n".join(lines) + "\n"
    if not args.nodes_per_trial:
        lines += ["# runs start without srun: Lightning must not take them for srun tasks",
                  "unset SLURM_NTASKS SLURM_NPROCS"]
    lines += ["# one runner per task, all on one storage; it gets the signals (exec) and requeues itself on USR1",
              "exec " + shlex.join(_runner_command(args, sweep_file, sweep_dir, storage))]
    return "\n".join(lines) + "\n"


def submit_sweep(sweep: dict, args: argparse.Namespace) -> int:
    name, sweep_dir = sweep_place(sweep.get("name"), args)
    root = program_root(sweep.get("program"), getattr(args, "sweep_file", None))  # exists before queueing
    if args.cfg and Path(args.cfg).is_file():
        args.cfg = str(Path(args.cfg).resolve())  # the tasks start elsewhere
    storage = args.storage or f"{JOURNAL_SCHEME}{sweep_dir / 'optuna.journal'}"
    if journal_file(storage) is not None:
        storage = f"{JOURNAL_SCHEME}{journal_file(storage)}"  # absolute: tasks start in the repository root
    if storage.startswith("sqlite:///") and (problem := sqlite_problem(Path(storage[len("sqlite:///"):]))):
        raise UsageError(problem)  # before submission: SQLite on a network file system (journal.py)
    (sweep_dir / "slurm").mkdir(parents=True, exist_ok=True)
    task_sweep = sweep_dir / "slurm" / "sweep.yaml"  # the sweep the tasks run, as given (a preset too)
    import yaml

    write_atomic(task_sweep, yaml.safe_dump(sweep, sort_keys=False))
    sweep_id = register(sweep, args, 1, "run it offline with --backend local") \
        if args.backend == "wandb" and not args.dry_run else "ENTITY/PROJECT/ID"
    script = render(args, name, task_sweep, sweep_dir, storage, sweep_id)
    path = sweep_dir / "slurm" / f"{name}.sbatch"
    write_atomic(path, script)
    print(script)
    print(f"wrote {path}")
    if args.dry_run:
        print(f"not submitted (--dry-run); submit it with: sbatch {path}")
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UsageError(f"sbatch not found: run this on a SLURM login node, or submit {path} from one")
    done = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        raise UsageError(f"sbatch refused {path}: {done.stderr.strip()}")
    job = done.stdout.strip().split(";")[0]
    print(f"submitted job array {job} ({args.array} tasks). Watch: squeue -j {job}; "
          f"tail -f {sweep_dir / 'slurm'}/{job}_*.out; python -m sweeps report {sweep_dir}")
    return 0
