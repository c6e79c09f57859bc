"""The two places where the in-run contract needs Lightning internals (no public route exists).

* Lightning registers its own SIGTERM handler right after `Callback.setup` (`Trainer._run`
  calls `trainer._signal_connector.register_signal_handlers()`), and that handler runs a
  collective inside the signal handler. There is no option to turn it off, so the connector's
  method is replaced for this trainer.
* After a stop, rank 0 waits for the DDP children that Lightning's subprocess launcher
  started (`strategy.launcher.procs`); Lightning offers no public accessor for them.

tests/test_architecture.py (test_lightning_internals_the_contract_relies_on_exist) fails when
either attribute disappears; pyproject bounds lightning <2.7.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import lightning.pytorch as pl


def keep_sigterm_handler(trainer: pl.Trainer, install: Callable[[], None]) -> None:
    """Make Lightning's signal registration install ours instead of its own."""
    trainer._signal_connector.register_signal_handlers = install


def ddp_children(trainer: pl.Trainer) -> list[subprocess.Popen]:
    """The processes Lightning's subprocess launcher started for ranks > 0 (empty otherwise)."""
    return list(getattr(trainer.strategy.launcher, "procs", None) or [])
