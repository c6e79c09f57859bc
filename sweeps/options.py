"""The options of `python -m sweeps run` and `python -m sweeps slurm` (sweeps/main.py builds the
parser; the ranges are in argtypes.py)."""

from __future__ import annotations

import argparse

from sweeps import argtypes


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["local", "wandb"], default="local")
    parser.add_argument("--count", type=argtypes.COUNT,
                     help="runs in the whole sweep, counted across restarts and runners sharing a storage "
                          "(grid: default and at most all points; random/bayes: default run_cap, else 10)")
    parser.add_argument("--workers", type=argtypes.WORKERS, help="parallel runs (default: one per GPU slot, else 1)")
    parser.add_argument("--gpus", help="comma-separated indexes into the visible GPUs, one run per GPU")
    parser.add_argument("--gpus_per_trial", "--gpus-per-trial", dest="gpus_per_trial", type=argtypes.PER_GPU, default=1,
                     help="GPUs per run (DDP inside a run)")
    parser.add_argument("--trials_per_gpu", "--trials-per-gpu", dest="trials_per_gpu", type=argtypes.PER_GPU, default=1,
                     help="runs sharing one GPU (small models)")
    parser.add_argument("--min_free_gpu_mem", "--min-free-gpu-mem", dest="min_free_gpu_mem", type=argtypes.GPU_MEM_GB,
                     metavar="GB", help="start a run on a GPU only while it has at least GB free (nvidia-smi)")
    parser.add_argument("--heartbeat", type=argtypes.HEARTBEAT_S, metavar="S",
                     help="seconds between the runner's heartbeats in the storage; a run whose runner misses 3 "
                          "is retried by any live runner, from its checkpoint (default: the sweep's, else 10; "
                          "all runners of a sweep use the same)")
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite in the sweep directory)")
    parser.add_argument("--out", help="sweep directory (default sweep_runs/<sweep name>)")
    parser.add_argument("--seed", type=argtypes.SEED, default=0, help="sampler seed: same seed, same configs")
    parser.add_argument("--entity", help="W&B entity")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline",
                     help="W&B logging of runs launched by the offline runner")
    parser.add_argument("--max_failures", "--max-failures", dest="max_failures", type=argtypes.MAX_FAILURES, default=5,
                     help="stop after this many failures in a row")
    parser.add_argument("--quiet", action="store_true", help="no live status line, only one line per event")
    parser.add_argument("--keep_checkpoints", "--keep-checkpoints", dest="keep_checkpoints", type=argtypes.keep_or_all,
                     default=argparse.SUPPRESS, metavar="K", help="after each run, keep the checkpoints of the K "
                     "best runs (best epoch, no optimizer state), remove those of ended runs (default 3, "
                     "sweeps/runner/prune.py; `all`: keep all)")
    parser.add_argument("--nodes_per_trial", "--nodes-per-trial", dest="nodes_per_trial", type=argtypes.NODES, metavar="M",
                     help="inside a SLURM job: each run an srun step across M nodes, one DDP run (python -m sweeps "
                          "slurm sets this)")
    parser.add_argument("--tasks_per_node", "--tasks-per-node", dest="tasks_per_node", type=argtypes.TASKS, metavar="T",
                     help="with --nodes-per-trial: DDP processes per node (default --gpus-per-trial)")


def add_slurm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--array", type=argtypes.ARRAY, required=True, metavar="N", help="array tasks (runners) at once")
    parser.add_argument("--gpus_per_task", "--gpus-per-task", dest="gpus_per_task", type=argtypes.GPUS_PER_TASK, default=0,
                       metavar="G", help="GPUs per array task (per node with --nodes-per-trial); 0: CPU")
    parser.add_argument("--nodes_per_trial", "--nodes-per-trial", dest="nodes_per_trial", type=argtypes.NODES, metavar="M",
                       help="each trial one DDP run across M nodes (an srun step of the task's allocation)")
    parser.add_argument("--tasks_per_node", "--tasks-per-node", dest="tasks_per_node", type=argtypes.TASKS, metavar="T",
                       help="with --nodes-per-trial: DDP processes per node (default: --gpus-per-task, else 1)")
    parser.add_argument("--cpus_per_task", "--cpus-per-task", dest="cpus_per_task", type=argtypes.CPUS,
                       help="CPU cores per array task (per DDP process with --nodes-per-trial)")
    parser.add_argument("--partition", type=argtypes.sbatch_value(), help="SLURM partition")
    parser.add_argument("--time", type=argtypes.sbatch_value(), help="time limit per task, e.g. 24:00:00 (a task requeues itself before it)")
    parser.add_argument("--sbatch", type=argtypes.sbatch_value(option=True), action="append", default=[], metavar="OPTION",
                       help="another #SBATCH option, e.g. --sbatch=--mem=64G (repeatable)")
    parser.add_argument("--backend", choices=["local", "wandb"], default="local")
    parser.add_argument("--count", type=argtypes.COUNT, help="runs in the whole sweep, across all tasks")
    parser.add_argument("--storage", help="shared storage: a journal file (default SWEEP_DIR/optuna.journal) or "
                                         "a database URL (postgresql://...)")
    parser.add_argument("--out", help="sweep directory on a file system all nodes share (default sweep_runs/<name>)")
    parser.add_argument("--heartbeat", type=argtypes.HEARTBEAT_S, metavar="S", help="the runners' heartbeat (see `run --help`)")
    parser.add_argument("--seed", type=argtypes.SEED, help="sampler seed")
    parser.add_argument("--keep_checkpoints", "--keep-checkpoints", dest="keep_checkpoints", type=argtypes.keep_or_all,
                       default=argparse.SUPPRESS, metavar="K", help="every task's `run --keep-checkpoints` (default 3)")
    parser.add_argument("--entity", help="W&B entity")
    parser.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=True,
                       help="let SLURM requeue a preempted task (default); a task also requeues itself "
                            "90 s before its time limit")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                       help="write and show the script, do not submit it")
