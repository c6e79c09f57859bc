"""Running a sweep file: offline with Optuna, with W&B agents, or as a SLURM job array
(README, "Architecture")."""

from sweeps.runner.command import run_offline
from sweeps.runner.launch import agent_argv
from sweeps.runner.runner import Runner
from sweeps.runner.sbatch import submit_sweep
from sweeps.runner.space import build_space, make_sampler
from sweeps.runner.storage import Storage
from sweeps.runner.wandb_agents import run_wandb_sweep

__all__ = [
    "Runner",
    "Storage",
    "agent_argv",
    "build_space",
    "make_sampler",
    "run_offline",
    "run_wandb_sweep",
    "submit_sweep",
]
