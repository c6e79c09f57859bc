"""One training process: the LightningCLI (XrayCLI), its option groups, run directories and
loggers, evaluation. Imports models, datamodules, evaluation and the in-run sweep contract
(sweeps.contract) only."""

from training.cli import XrayCLI, cli_main
from training.options import DemoOptions, RunOptions
from training.program import main

__all__ = ["DemoOptions", "RunOptions", "XrayCLI", "cli_main", "main"]
