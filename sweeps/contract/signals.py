"""The stop flag, importable before anything heavy so that cli.py installs it first thing:
a W&B agent may stop a run while it is still importing torch. Set by SIGTERM, or by the
lifeline (sweeps/contract/lifeline.py) when the offline runner that started the run is gone."""

from __future__ import annotations

import signal
import threading
import time
from typing import Optional


class StopSignal:
    """Process-wide stop flag; the SIGTERM handler does nothing else (no I/O, no collectives)."""

    requested = False
    requested_at: Optional[float] = None  # time.monotonic() of the first request
    reason = "SIGTERM"

    @classmethod
    def install(cls) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: cls.request("SIGTERM"))

    @classmethod
    def request(cls, reason: str) -> None:
        """Ask the run to stop cleanly (what SIGTERM does); the first reason is kept."""
        if not cls.requested:
            cls.requested_at, cls.reason = time.monotonic(), reason
        cls.requested = True

    @classmethod
    def seconds_since(cls) -> float:
        """Seconds since the stop was requested (0 when it was not)."""
        return time.monotonic() - cls.requested_at if cls.requested and cls.requested_at is not None else 0.0

    @classmethod
    def reset(cls) -> None:
        cls.requested, cls.requested_at, cls.reason = False, None, "SIGTERM"
