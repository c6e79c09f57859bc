"""`python cli.py fit --config configs/ra_hand.yaml`, the program of every sweep file: a thin
launcher of training.program. The SIGTERM flag and the runner's lifeline come before the heavy
imports: a run may be stopped while it is still importing torch (README, "Architecture")."""

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
