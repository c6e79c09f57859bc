"""`python cli.py fit --config configs/ra_hand.yaml`: the program of every sweep file.

A thin launcher: the CLI itself is training.cli (importable without side effects). Run as a
program, it first installs the SIGTERM flag, before the heavy imports, because a W&B agent
may stop a run while it is still importing torch.
"""

if __name__ == "__main__":
    from sweeps.contract.signals import StopSignal

    StopSignal.install()

import sys

from training.cli import XrayCLI, cli_main, main

__all__ = ["XrayCLI", "cli_main", "main"]

if __name__ == "__main__":
    sys.exit(main())
