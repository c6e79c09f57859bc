"""How runners and runs learn that the other side is gone (README, "Sweeps without a W&B server":
Dead runners, No orphaned runs). Runner -> storage: Optuna's heartbeat, which the runner beats
itself, in a thread, for every trial it runs (it asks and tells trials outside study.optimize,
which would beat for them). Runner -> run: the lifeline pipe (sweeps/contract/lifeline.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_heartbeat_warnings() -> Iterator[None]:
    """Optuna marks heartbeats experimental and warns when a trial is asked outside
    study.optimize with heartbeats on; the runner records the heartbeats itself."""
    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


class Heartbeat:
    """Optuna heartbeats for this runner's trials, every `interval` seconds, in a thread of its own: a
    main loop busy for a while (a slow ask, a lock held by another runner) must not make them look dead."""

    def __init__(self, storage: Any, interval: int) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optuna-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        """Beat for this trial from now on; the first beat is recorded before this returns."""
        self.storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self._ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # a busy or unreachable database: try again next beat
                    log.warning("heartbeat of trial %d not recorded: %s", trial_id, e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Lifeline:
    """The runner's end of the lifeline: a pipe whose write end only this process holds (it
    is not inheritable, so no run gets it); each run inherits the read end."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()

    def close(self) -> None:
        for fd in (self.read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
