"""The checkpoints of one run directory (and of its folds). What is kept, and when, is decided for
a whole sweep by sweeps/runner/prune.py (README, "Keeping the disk small")."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rundir.layout import BEST_CHECKPOINT, CHECKPOINT_DIR, CV_FILE, FOLD_DIR, LOCK_FILE

BEST_PREFIX = BEST_CHECKPOINT.split("{")[0]  # best-epoch=NNN.ckpt, ModelCheckpoint's name for the best epoch
# What only `fit` restores (lightning/pytorch/trainer/connectors/checkpoint_connector.py:
# restore_training_state loads optimizer and scheduler states only when FITTING, and a
# checkpoint without "loops" skips restore_loops); test, validate and predict load the rest.
TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops")


@dataclass
class Pruned:
    """What pruning removed or rewrote (or would, in a dry run), and what it left alone, why."""

    removed: list[Path] = field(default_factory=list)
    stripped: list[Path] = field(default_factory=list)
    freed: int = 0  # bytes
    skipped: list[str] = field(default_factory=list)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's checkpoints/ and, for a cross-validated run, each fold's."""
    folds = sorted(p for p in Path(run_dir).glob(FOLD_DIR.format("*")) if p.name[len(FOLD_DIR) - 2:].isdigit())
    return [Path(run_dir) / CHECKPOINT_DIR, *(f / CHECKPOINT_DIR for f in folds)]


def checkpoints(run_dir: Path) -> list[Path]:
    return [p for d in checkpoint_dirs(run_dir) for p in sorted(d.glob("*.ckpt"))]


def needed(run_dir: Path) -> set[Path]:
    """The checkpoints a finished run's results use: the best epoch's (test and predict), and
    those a cross-validated run's cv.json names (its fold ensemble; the last epoch's when a fold
    had no best)."""
    keep = {p for p in checkpoints(run_dir) if p.name.startswith(BEST_PREFIX)}
    try:
        named = json.loads((Path(run_dir) / CV_FILE).read_text()).get("checkpoints") or []
    except (OSError, ValueError, AttributeError):
        named = []
    keep.update(Path(run_dir) / str(entry) for entry in named if isinstance(entry, str))
    return keep


def busy(run_dir: Path, idle_s: Optional[float] = None) -> Optional[str]:
    """Why a process may be writing the run now, or None: a `fit` holds its fit.lock (the run's
    or a fold's), or, with `idle_s`, a file of it changed less than idle_s seconds ago."""
    for directory in [Path(run_dir), *(d.parent for d in checkpoint_dirs(run_dir)[1:])]:
        if _locked(directory / LOCK_FILE):
            return f"a fit holds {directory.name}/{LOCK_FILE}: it is running"
    if idle_s is not None:
        newest = max((_mtime(p) for p in Path(run_dir).rglob("*")), default=0.0)
        if time.time() - newest < idle_s:
            return f"written less than {idle_s:g} s ago"
    return None


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:  # gone while we looked: something is writing there
        return time.time()


def _locked(path: Path) -> bool:
    """Held by another open file: a shared probe never blocks, and is dropped at once (a `fit`
    starting in that microsecond would refuse the directory, as for any second fit)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def inside(path: Path, root: Path) -> bool:
    """A regular file reached from `root` without a symbolic link on the way (neither the file,
    nor its run directory, nor checkpoints/): never act on anything outside `root`."""
    path = Path(os.path.abspath(path))
    return path.resolve() == path and path.is_relative_to(Path(root).resolve()) and path.is_file()


def remove(path: Path, root: Path, pruned: Pruned, dry_run: bool) -> None:
    if not inside(path, root):
        pruned.skipped.append(f"{path}: a symbolic link or outside {root}; left alone")
        return
    try:
        size = path.stat().st_size
        if not dry_run:
            path.unlink()
    except FileNotFoundError:
        return  # another runner's prune was first
    except OSError as e:  # not ours to remove (read-only, another user's): said, the rest goes on
        pruned.skipped.append(f"{path}: not removed ({e.strerror})")
        return
    pruned.removed.append(path)
    pruned.freed += size


def strip(path: Path, root: Path, pruned: Pruned, dry_run: bool) -> None:
    """Drop the training state from a checkpoint (rewritten whole, then renamed over it)."""
    if not inside(path, root):
        pruned.skipped.append(f"{path}: a symbolic link or outside {root}; left alone")
        return
    if not _has_training_state(path):
        return  # stripped before, or not a torch checkpoint (the tests' stand-in program): as it is
    import torch

    try:  # weights_only: unpickling a file found in a directory must not run its code; tensors are not read
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:
        pruned.skipped.append(f"{path}: kept with its training state (not loadable as weights only: "
                              f"{type(e).__name__})")
        return
    dropped = [checkpoint.pop(key, None) for key in TRAINING_STATE]
    if dry_run:  # what the dropped tensors hold: nothing is written
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors(dropped)}
        freed = sum(storages.values())
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".stripped", dir=path.parent)
        os.close(fd)  # a name of its own: runners pruning at once never write into one file
        tmp = Path(name)
        try:
            before, mode = path.stat().st_size, path.stat().st_mode
            torch.save(checkpoint, tmp)
            os.chmod(tmp, mode)
            freed = before - tmp.stat().st_size
            os.replace(tmp, path)
        except OSError as e:  # a full or read-only disk: the checkpoint stays as it was
            pruned.skipped.append(f"{path}: not stripped ({e.strerror or e})")
            return
        finally:
            tmp.unlink(missing_ok=True)
    pruned.stripped.append(path)
    pruned.freed += freed


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (dict, list, tuple)):
        for value in obj.values() if isinstance(obj, dict) else obj:
            yield from _tensors(value)


def _has_training_state(path: Path) -> bool:
    """torch.save writes a zip whose data.pkl holds the dict's keys (tensors are separate
    entries): read without torch, so that a stripped checkpoint is not loaded again."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            data = b"".join(archive.read(n) for n in pickles)
    except (OSError, zipfile.BadZipFile):
        return False
    return any(key.encode() in data for key in TRAINING_STATE)
