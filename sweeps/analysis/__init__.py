"""What a sweep found: its runs ranked, the best configuration (`best`, `--export`), and the
self-contained HTML report (`report`). Reads the sweep directory or W&B, never runs anything."""

from sweeps.analysis.best import show_best
from sweeps.analysis.report import write_report
from sweeps.analysis.results import best_config, load_offline_runs

__all__ = ["best_config", "load_offline_runs", "show_best", "write_report"]
