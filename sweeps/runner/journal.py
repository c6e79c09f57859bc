"""Sweep storage on a shared file system without a database server (README, "Sweeps on SLURM"):
Optuna's journal file (an append-only log whose lock is a symlink, safe on NFS) with heartbeats,
and the refusal of SQLite there (its file locks are unreliable on network file systems, which
corrupts the database: Optuna #815, #820). A heartbeat holds the beating host's time.time(): the
hosts of a sweep must keep their clocks in step (NTP); the RDB storages compare database time.
Optuna's lock guards each append; the runner's critical section (trials.py) spans several, so it
takes a second lock of the same kind (journal_lock), on its own file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

MOUNTS = "/proc/mounts"
JOURNAL_SCHEME = "journal://"
JOURNAL_SUFFIXES = (".journal", ".log")
LOCK_GRACE_S = 60  # the runners' critical sections take well under a second
HEARTBEAT_KEY = "runner_heartbeat"  # trial system attribute: time.time() of the last beat
# /proc/mounts file system types of shared network or cluster file systems.
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs",
              "fuse.glusterfs", "fuse.beegfs", "fuse.sshfs", "panfs", "wekafs", "afs", "9p", "orangefs", "pvfs2")


def journal_file(url: str) -> Optional[Path]:
    """The journal file a --storage value names, or None when it is a database URL."""
    if url.startswith(JOURNAL_SCHEME):
        return Path(url[len(JOURNAL_SCHEME):]).resolve()
    if "://" not in url and url.endswith(JOURNAL_SUFFIXES):
        return Path(url).resolve()
    return None


def network_fs(path: Path) -> Optional[str]:
    """The network file system type holding `path` (its nearest existing folder: the longest mount
    point above it in /proc/mounts), or None for a local one or where that cannot be read."""
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        lines = Path(MOUNTS).read_text().splitlines()
    except OSError:
        return None
    best, kind = -1, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (path == point or point in path.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind if kind and (kind in NETWORK_FS or kind.split(".")[-1] in NETWORK_FS) else None


def sqlite_problem(db: Path) -> Optional[str]:
    """Why this SQLite file must not hold a sweep, or None."""
    kind = network_fs(db)
    if kind is None:
        return None
    return (f"the SQLite file {db} is on a network file system ({kind}); SQLite's locks are not reliable "
            f"there and runners on several nodes would corrupt it. Use a journal file on the shared file "
            f"system (--storage {db.with_suffix('.journal')}, no server needed) or PostgreSQL "
            "(--storage postgresql://user:pw@dbhost/sweeps)")


def journal_lock(path: Path) -> Any:
    """The runners' lock for the sweep in journal `path`: Optuna's symlink lock (atomic on NFS)
    on `<path>.runner`, released by force after LOCK_GRACE_S (a runner killed while holding it)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    class RunnerLock(JournalFileSymlinkLock):
        def acquire(self) -> bool:
            # A waiter times its grace from the last change of the link's mtime (stat follows the
            # link to the target, optuna/storages/journal/_file.py); the target is never written,
            # so a runner that waited LOCK_GRACE_S in all broke a lock its holder took a moment
            # ago. Each new holder touches it: the grace runs from the current holder's start.
            acquired = super().acquire()
            os.utime(self._lock_target_file)
            return acquired

    target = path.with_name(path.name + ".runner")  # must exist: the lock's age is read from it
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch()
    return RunnerLock(str(target), grace_period=LOCK_GRACE_S)


def journal_storage(path: Path, heartbeat: int, grace: int) -> Any:
    """Optuna's JournalStorage on `path`, with heartbeats (Optuna gives them to RDBStorage only)."""
    from optuna.storages._heartbeat import (
        BaseHeartbeat,  # not exported; tests/test_slurm.py fails if it moves
    )
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from optuna.trial import TrialState

    class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
        """Optuna's heartbeat interface, which any BaseHeartbeat storage implements: these four methods."""

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            deadline = time.time() - grace
            running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            return [self.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in running
                    if t.system_attrs.get(HEARTBEAT_KEY, deadline) < deadline]

        def get_heartbeat_interval(self) -> int:
            return heartbeat

        def get_heartbeat_stale_trial_callback(self) -> None:
            return None  # stale trials are given back by the runner (recovery.py), not failed

    path.parent.mkdir(parents=True, exist_ok=True)
    return HeartbeatJournalStorage(JournalFileBackend(str(path)))
