"""Running a sweep file: offline with Optuna, with W&B agents, or as a SLURM job array
(README, "Architecture")."""

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
    "make_sampler",
    "mask_password",
    "prepare_sweep",
    "run_offline",
    "run_wandb_sweep",
    "submit_sweep",
]
