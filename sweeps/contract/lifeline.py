"""The lifeline: a run started by the offline runner stops when that runner is gone, however
it died (README, "Sweeps without a W&B server": "No orphaned runs", also why not
PR_SET_PDEATHSIG). Only rank 0 watches; the other ranks follow it through RunGuard's all-reduced
flag. The process group is killed HARD_STOP_S later should the run be stuck outside training (a
cache build, a hung collective).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
import time

from rundir.grace import HARD_STOP_S
from sweeps.contract.signals import StopSignal

LIFELINE_ENV = "XRAY_RUNNER_LIFELINE"  # the read end's file descriptor number

log = logging.getLogger(__name__)
_watching = threading.Event()


def watch_runner() -> bool:
    """Start watching the runner's lifeline when this process was given one; idempotent.
    The variable is removed first, so that DDP children (which re-run the script with a copy
    of the environment, without the descriptor) do not take another file for it."""
    value = os.environ.pop(LIFELINE_ENV, None)
    if value is None or _watching.is_set():
        return False
    try:
        fd = int(value)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise OSError(f"descriptor {fd} is not a pipe")
    except (ValueError, OSError) as e:
        log.warning("%s=%s is not a lifeline pipe (%s); the run will not notice its runner's death", LIFELINE_ENV,
                    value, e)
        return False
    _watching.set()
    threading.Thread(target=_watch, args=(fd,), name="runner-lifeline", daemon=True).start()
    return True


def _watch(fd: int) -> None:
    # Nothing is ever written: the read returns end of file (b"") when the runner's write end is
    # closed, i.e. the runner is gone. A signal does not end it (PEP 475: os.read is retried).
    with contextlib.suppress(OSError):
        while os.read(fd, 1):
            pass
    with contextlib.suppress(OSError):
        os.close(fd)
    StopSignal.request("the sweep runner is gone")
    log.warning("the sweep runner that started this run is gone: stopping (last.ckpt is saved; the sweep "
                "continues this run from it when it is started again)")
    time.sleep(HARD_STOP_S)
    log.error("the run did not stop within %.0f s of its runner's death; killing it", HARD_STOP_S)
    if os.getpgrp() == os.getpid():  # the runner started us as a group: DDP ranks and workers too
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
