"""Running a sweep file: offline with Optuna (storage, jobs, scheduling, hyperband), or by
registering it with W&B and starting `wandb agent`s, or as a SLURM job array of either
(sbatch.py, slurm.py). Runs are launched with the W&B agent's argv; the runner talks to them
only through argv, the environment (run directory, lifeline) and the files they write.
Liveness is Optuna's heartbeat (liveness.py, recovery.py)."""

from rundir.launcher import child_env
from rundir.slots import gpu_slots, visible_gpus
from sweeps.runner.command import run_offline
from sweeps.runner.launch import agent_argv, prepare_sweep
from sweeps.runner.placement import GpuMemoryGuard
from sweeps.runner.runner import LaunchSettings, Runner
from sweeps.runner.sbatch import submit_sweep
from sweeps.runner.slurm import batch_job_id
from sweeps.runner.space import build_space, make_sampler
from sweeps.runner.storage import Storage, mask_password
from sweeps.runner.wandb_agents import run_wandb_sweep

__all__ = [
    "GpuMemoryGuard",
    "LaunchSettings",
    "Runner",
    "Storage",
    "agent_argv",
    "batch_job_id",
    "build_space",
    "child_env",
    "gpu_slots",
    "make_sampler",
    "mask_password",
    "prepare_sweep",
    "run_offline",
    "run_wandb_sweep",
    "submit_sweep",
    "visible_gpus",
]
