"""One run of an offline sweep: its process, why it failed, and where an interrupted run
continues (its own directory, from checkpoints/last.ckpt; a cross-validated run from the folds
it keeps there)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sweeps.contract.history import FOLD_DIR
from sweeps.errors import RunnerError
from sweeps.runner.reasons import mask_paths

KILL_AFTER_S = 30.0  # as the W&B agent: SIGKILL this long after SIGTERM
CHECKPOINT = "checkpoints/last.ckpt"  # in the run directory; saved each epoch and on a stop


def owner() -> dict:
    """Who runs a trial, for people reading the study (liveness is Optuna's heartbeat)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why a checkpoint cannot be resumed from, or None. torch.save writes a zip archive with a
    CRC per entry: a truncated or damaged file fails here without importing torch (the run
    checks again, loading it, and starts over if that fails)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as e:
        return f"{type(e).__name__}: {e}"
    return f"entry {bad} is corrupt" if bad is not None else None


def resume_point(resume: Optional[dict]) -> tuple[Optional[Path], str]:
    """(the run directory a retried trial continues, or None to start over; what to say)."""
    if not resume:
        return None, ""
    run_dir, of = Path(resume["run_path"]), f"run {int(resume.get('of', -1)):04d}"
    ckpt = run_dir / CHECKPOINT
    if not run_dir.is_dir():
        return None, f"{of}'s directory {run_dir} is not reachable here: it starts over"
    if not ckpt.is_file() and (run_dir / FOLD_DIR.format(0)).is_dir():
        return run_dir, f"continues {of}, a cross-validated run, in its directory: the folds that finished are kept"
    if not ckpt.is_file():
        return None, f"{of} left no checkpoint: it starts over"
    problem = checkpoint_problem(ckpt)
    if problem is not None:
        return None, f"{of}'s checkpoint {ckpt} is unreadable ({problem}): it starts over"
    return run_dir, f"continues {of} from its checkpoint"


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
    interrupted: bool = False  # by this runner's SIGINT/SIGTERM: it continues on the next start
    lost: bool = False  # another runner failed its trial (no heartbeat) and runs it again
    trained: bool = False  # training ended (after-fit mark): hyperband leaves it alone
    history: list = field(default_factory=list)
    reported: int = 0  # history values given to Optuna as intermediate values
    trial_id: int = -1  # the storage's id of the trial (heartbeats)

    def outcome(self, code: int) -> tuple[str, Optional[str]]:
        """(state, reason) of the run that ended with exit status `code`."""
        if self.lost:
            return "interrupted", "another runner found no heartbeat from this runner and runs it again"
        if self.interrupted:
            return "interrupted", "the runner was interrupted; the run continues on the next start"
        if code == 0 or (self.term_at is not None and code < 0 and self.stop_reason):
            if code < 0:
                return "stopped", f"{self.stop_reason} (did not exit within {KILL_AFTER_S:g} s of SIGTERM; killed)"
            return ("stopped" if self.stop_reason else "finished"), self.stop_reason
        return "failed", failure_reason(self.run_dir / "output.log", code)

    def terminate(self) -> None:
        """SIGTERM to the run's main process only, as the W&B agent does."""
        if self.term_at is None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            self.term_at = time.monotonic()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def fresh_run_dir(sweep_dir: Path, number: int) -> Path:
    """runs/NNNN, or runs/NNNN-rK when a trial of that number ran before (another storage)."""
    run_dir = sweep_dir / "runs" / f"{number:04d}"
    for i in itertools.count(2):
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            run_dir = sweep_dir / "runs" / f"{number:04d}-r{i}"
    raise AssertionError("unreachable")


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


