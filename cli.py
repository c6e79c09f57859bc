"""`python cli.py fit --config configs/ra_hand.yaml`: the program of every sweep file.

A thin launcher: the CLI itself is training.cli, its exit codes training.program (both
importable without side effects). Run as a program, it first installs the SIGTERM flag and
watches the offline runner's lifeline, before the heavy imports, because a W&B agent (or the
runner) may stop a run while it is still importing torch.
"""

if __name__ == "__main__":
    from sweeps.contract.lifeline import watch_runner
    from sweeps.contract.signals import StopSignal

    StopSignal.install()
    watch_runner()

import sys

from training.cli import XrayCLI, cli_main
from training.program import main

__all__ = ["XrayCLI", "cli_main", "main"]

if __name__ == "__main__":
    sys.exit(main())
