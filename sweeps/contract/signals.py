"""The SIGTERM flag, importable before anything heavy so that cli.py installs it first thing:
a W&B agent may stop a run while it is still importing torch."""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopSignal:
    """Process-wide SIGTERM flag; the handler does nothing else (no I/O, no collectives)."""

    requested = False

    @classmethod
    def install(cls) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, cls._handle)

    @classmethod
    def _handle(cls, signum: int, frame: Any) -> None:
        cls.requested = True

    @classmethod
    def reset(cls) -> None:
        cls.requested = False
