"""One run of an offline sweep: its process, why it failed, and the liveness checks that
tell a dead runner's leftovers from a live one's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sweeps.errors import RunnerError
from sweeps.runner.reasons import mask_paths

KILL_AFTER_S = 30.0  # as the W&B agent: SIGKILL this long after SIGTERM


def _proc_start(pid: int) -> Optional[str]:
    """Start time of a process (Linux), so that a reused pid is not taken for the old process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: Optional[dict]) -> bool:
    if not owner or not owner.get("pid"):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = owner.get("start")
    return start is None or _proc_start(owner["pid"]) in (None, start)


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def failure_reason(log: Path, code: int) -> str:
    """Why a run failed, with file names masked (mask_paths)."""
    return mask_paths(_failure_reason(log, code))


def _failure_reason(log: Path, code: int) -> str:
    """The `error:` line, else the last line of a traceback, else the exit code."""
    try:
        lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if tb:
        tail = [ln for ln in lines[tb[-1] + 1:] if ln and not ln.startswith((" ", "\t"))]
        if tail:
            return tail[-1]
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"


@dataclass
class Job:
    trial: Any  # optuna.trial.Trial
    proc: subprocess.Popen
    slot: int  # index into the runner's slots
    run_dir: Path
    attrs: dict
    started: float = field(default_factory=time.monotonic)
    stop_reason: Optional[str] = None
    term_at: Optional[float] = None
    interrupted: bool = False
    history: list = field(default_factory=list)

    def terminate(self) -> None:
        """SIGTERM to the run's main process only, as the W&B agent does."""
        if self.term_at is None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            self.term_at = time.monotonic()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def find_root(sweep: dict, sweep_file: Optional[str]) -> Path:
    program = Path(str(sweep.get("program") or "cli.py"))
    if program.is_absolute():
        if program.is_file():
            return program.parent
        raise RunnerError(f"program {program} of the sweep does not exist")
    candidates = [Path.cwd()]
    if sweep_file:
        candidates += list(Path(sweep_file).resolve().parents)
    for root in candidates:
        if (root / program).is_file():
            return root.resolve()
    raise RunnerError(f"program {program} of the sweep not found in {Path.cwd()} or above the sweep file; "
                      "run from the repository root")


