"""What a sweep found: its runs ranked, the best configuration (`best`, `--export`), and the
self-contained HTML report (`report`). Reads the sweep directory or W&B, never runs anything."""

from sweeps.analysis.best import show_best
from sweeps.analysis.report import write_report
from sweeps.analysis.results import best_config, best_run, load_offline_runs, runs_table, used_settings
from sweeps.analysis.wandb_runs import load_wandb_runs

__all__ = ["best_config", "best_run", "load_offline_runs", "load_wandb_runs", "runs_table", "show_best",
           "used_settings", "write_report"]
