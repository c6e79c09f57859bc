"""Every run writes into a directory of its own: runs/<experiment>/<name>/. A run continued from
its last.ckpt writes into the same one, so that its files and sweep-metric history stay one run; a
directory given from outside (XRAY_RUN_DIR) is checked and locked first (adopt_run_dir)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Optional

from rundir.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CV_FILE,
    FOLD_DONE,
    LOCK_FILE,
    MARKERS,
    RUN_DIR_ENV,
    TEST_REPORT,
    TRAINING_FILE,
    is_cv_run,
)

_LOCKS: dict[Path, int] = {}  # run directory -> descriptor holding its lock, for this process's life


class RunDirError(ValueError):
    """No run directory can be made under run.root; cli.py prints it as one `error:` paragraph."""

    def __init__(self, where: Path, error: OSError) -> None:
        super().__init__(f"cannot create a run directory under {where}: {error.strerror or error} "
                         "(set --run.root to a writable folder)")


def make_run_dir(root: Path, experiment: str, name: Optional[str]) -> Path:
    """A fresh directory for this run; never reuses one (SaveConfigCallback would refuse it)."""
    base = name or os.environ.get("WANDB_RUN_ID") or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    parent = root / experiment
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            candidate = parent / (base if i == 1 else f"{base}-{i}")
            with contextlib.suppress(FileExistsError):
                candidate.mkdir()  # atomic: concurrent runs never share a directory
                return candidate
    except OSError as e:  # read-only, a file where a folder goes, no space: not a traceback
        raise RunDirError(parent, e) from None
    raise FileExistsError(f"Too many runs named {base} under {parent}")


def run_dir_for(*, fit: bool, continuing: Optional[str], root: Path, experiment: str,
                name: Optional[str]) -> tuple[Path, bool]:
    """This process's run directory and whether it made it: XRAY_RUN_DIR's (from a launcher or our
    DDP parent), else the run whose last.ckpt a `fit` continues, else a fresh one."""
    inherited = os.environ.get(RUN_DIR_ENV)
    resumed = resumed_run_dir(continuing)
    if not (inherited or resumed):
        return make_run_dir(root, experiment, name), True
    run_dir = Path(inherited) if inherited else resumed
    if fit:
        run_dir = adopt_run_dir(run_dir, from_env=bool(inherited), continuing=continuing is not None)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(run_dir, e) from None
    return run_dir, False


def resumed_run_dir(ckpt_path: Optional[str]) -> Optional[Path]:
    """The run directory a checkpoint belongs to (`<run dir>/checkpoints/X.ckpt` next to the
    run's config.yaml), which a resumed fit continues; None for a checkpoint from elsewhere."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).expanduser()
    run_dir = path.parent.parent
    # last.ckpt continues the run; resuming from another checkpoint (best-*) starts a branch elsewhere
    if path.name.startswith("last") and path.parent.name == CHECKPOINT_DIR and (run_dir / CONFIG_FILE).is_file():
        return run_dir.resolve()
    return None


def _finished(run_dir: Path, continuing: bool) -> Optional[str]:
    """What says the run finished, or None. Continuing from last.ckpt, or a CV parent's rerun, may
    follow a finished training: the evaluation after it is what the rerun is for."""
    done = next((name for name in (TEST_REPORT, CV_FILE, FOLD_DONE) if (run_dir / name).exists()), None)
    if done:
        return f"it holds {done}"
    if continuing or is_cv_run(run_dir):
        return None
    try:
        trained = json.loads((run_dir / TRAINING_FILE).read_text()).get("done") is True
    except (OSError, ValueError, AttributeError):
        trained = False
    return f"its {TRAINING_FILE} says training is done" if trained else None


def adopt_run_dir(given: Path, *, from_env: bool, continuing: bool) -> Path:
    """The directory a `fit` was told to write into (from_env: XRAY_RUN_DIR; else the run whose
    last.ckpt it continues), made and locked, or refused in one line."""
    label = f"{RUN_DIR_ENV}={given}" if from_env else f"run directory {given}"

    def refuse(why: str) -> ValueError:
        return ValueError(f"{label}: {why}")

    path = Path(given).expanduser()
    if ".." in path.parts:
        raise refuse("a run directory path may not contain '..'")
    path = path.resolve()
    if path == Path(path.anchor) or path == Path.home().resolve():
        raise refuse("that is the filesystem root or your home folder, not a run directory")
    if any(os.environ.get(var, "0") != "0" for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        return path  # DDP children re-run the command with rank 0's XRAY_RUN_DIR: it alone checks and locks
    if path.exists() and not path.is_dir():
        raise refuse("that is a file, not a run directory")
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in MARKERS):
        raise refuse(f"that folder holds files no run wrote (a run directory holds {', '.join(MARKERS[:4])}, ...); "
                     "give a new or empty folder")
    if from_env and path.is_dir() and (why := _finished(path, continuing)):
        raise refuse(f"that folder holds a finished run ({why}); it is never written over: give a new folder, or "
                     "leave XRAY_RUN_DIR unset for a fresh one")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(path, e) from None
    if not _lock(path):
        raise refuse("another `fit` is writing into this run directory now (it holds "
                     f"{LOCK_FILE}); wait for it to end, or give another directory")
    return path


def _lock(run_dir: Path) -> bool:
    """An exclusive lock for as long as this process lives (the kernel drops it when the process
    ends, however it ends); False when another process holds it."""
    if run_dir in _LOCKS:
        return True  # this process holds it already (an in-process caller continuing its run)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _LOCKS[run_dir] = fd
    return True
