"""Running a sweep file: offline with Optuna, with W&B agents, or as a SLURM job array
(README, "Architecture")."""

from sweeps.runner.command import run_offline
from sweeps.runner.launch import agent_argv
from sweeps.runner.sbatch import submit_sweep
from sweeps.runner.space import build_space
from sweeps.runner.wandb_agents import run_wandb_sweep

__all__ = [
    "agent_argv",
    "build_space",
    "run_offline",
    "run_wandb_sweep",
    "submit_sweep",
]
