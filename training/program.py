"""`python cli.py`: the program around cli_main. Every error a user can act on is one `error:`
paragraph (the runner reads it back as the run's failure reason, rundir.records.failure_reason)
and an exit code: 2 bad input, 3 diverged, 4 out of memory; a stopped run exits 0."""

from __future__ import annotations

import os
import sys

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.readers import ImageReadError
from datamodules.records import DataError
from models.backbones import UnknownBackboneError, WeightsError
from sweeps.contract.guard import Diverged
from training.cli import cli_main

USER_ERRORS = (DataError, ImageReadError, UnknownBackboneError, WeightsError, FileNotFoundError)


def main() -> int:
    try:
        cli_main()
    except ArgumentError as e:
        print(f"error: {e}\n(options: python cli.py fit --help)", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except MemoryError as e:  # torch.OutOfMemoryError is not one; caught below by name
        print(f"error: out of memory: {e}", file=sys.stderr)
        return 4
    except RuntimeError as e:
        if type(e).__name__ != "OutOfMemoryError":
            raise
        print(f"error: out of GPU memory ({e}); lower data.batch_size or data.image_size, "
              "or use --trainer.precision=bf16-mixed", file=sys.stderr)
        return 4
    except (*USER_ERRORS, ValueError, MisconfigurationException) as e:
        # One paragraph a user can act on; XRAY_DEBUG=1 shows the traceback.
        if os.environ.get("XRAY_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
