"""The Optuna study of an offline sweep (README, "Sweeps without a W&B server": Storage) and the
lock around "count, then ask" and giving a trial back (trials.py): a file lock next to a SQLite database, an
advisory lock on PostgreSQL, Optuna's NFS-safe symlink lock next to a journal file (journal.py);
elsewhere (MySQL, ...) the runner re-checks each new trial and cancels it as surplus (trials.surplus).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote

from sweeps.errors import RunnerError
from sweeps.runner.journal import journal_file, journal_lock, journal_storage, sqlite_problem
from sweeps.runner.liveness import quiet_heartbeat_warnings

GRACE_BEATS = 3  # missed heartbeats before a trial is failed: one late beat is not a death
DEFAULT_HEARTBEAT_S = 10
HEARTBEAT_ATTR = "heartbeat_s"  # the study's interval: every runner of a sweep uses the same
DB_FILE = "optuna.db"  # the sweep directory's storage when --storage is not given


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def mask_password(text: str) -> str:
    """`text` with URL passwords and secret parameters masked (README, "Sweeps without a W&B
    server": Storage); a text that is one URL is masked whole. Nothing is rendered by SQLAlchemy
    first: its rendering percent-encodes a later @ (user:***@ss/secret%40host), which the mask missed."""
    if _WHOLE_URL.fullmatch(text):
        return _mask_url(text, _SECRET_IN_URL)
    return _SECRET.sub(r"\1\2***", _URL.sub(lambda m: _mask_url(m.group(), _SECRET), text))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")  # not a trailing "." or ":"
_WHOLE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\n\r]*")
_USERINFO = re.compile(r"^([^:]+://[^:@/]*:).*@", re.DOTALL)  # up to the last @: a password may hold @, / or spaces
_KEY = r"(?i)(?<![\w-])([\w-]*(?:password|passwd|pwd|secret|token|key|credential)[\w-]*)(\s*=\s*)"
_SECRET = re.compile(_KEY + r"([^\s&;'\"]+)")
_SECRET_IN_URL = re.compile(_KEY + r"([^&]+)")  # a whole URL's query value ends only at & (spaces too)


def _mask_url(url: str, secret: re.Pattern) -> str:
    return secret.sub(r"\1\2***", _USERINFO.sub(r"\1***@", url))


def check_url(url: str) -> None:
    """Refuse, before anything connects or creates a file, a storage URL that would go wrong: one
    whose heartbeats other runners cannot see, a password SQLAlchemy reads only up to an @ (the rest
    would go to DNS as the host), a SQLite file in a missing folder, a driver not installed."""
    from sqlalchemy.engine import make_url

    if journal_file(url) is not None:
        return  # a journal file on a shared file system (journal.py)
    shown = mask_password(url)
    problem = None
    try:
        parsed = make_url(driver_url(url))
        parsed.get_dialect()
        if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
            problem = "an in-memory SQLite database lives in one process: no other runner sees its heartbeats"
    except Exception:
        problem = ("it is not a database URL that Optuna's RDBStorage can use, and only that storage keeps "
                   "heartbeats (sqlite:///FILE, postgresql://..., mysql://...)")
    if problem is not None:
        raise RunnerError(f"--storage {shown}: {problem}; the runners' heartbeats (--heartbeat), which let "
                          "any runner continue the runs of a dead one, need such a database")
    given = _USERINFO.match(url)
    if given and parsed.password is not None:
        written = url[given.end(1):url.rindex("@")]
        cut = "@" in (parsed.host or "") + (parsed.database or "")  # not an @ in the query (?options=a@b)
        if cut and unquote(written) != parsed.password:
            raise RunnerError(f"--storage {shown}: its password holds an @, and SQLAlchemy would read the "
                              "password only up to it and take the rest for the host; write @ in a password as "
                              "%40 (percent-encode the password: urllib.parse.quote(password, safe=''))")
    if parsed.get_backend_name() == "sqlite" and not parsed.database.startswith("file:"):  # not in memory
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise RunnerError(f"--storage {shown}: the folder {folder} does not exist (a mistyped path?); "
                              "create it first, or leave --storage out for optuna.db in the sweep directory")
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as e:
        if parsed.get_backend_name() == "postgresql":
            raise RunnerError(f"--storage {shown}: no PostgreSQL driver is installed ({e}); install the project's "
                              "`postgres` extra (pip install -e '.[postgres]', i.e. psycopg2-binary) and write "
                              "postgresql+psycopg2://... to select it") from None
        raise RunnerError(f"--storage {shown}: the database driver for {parsed.drivername} is not installed "
                          f"({e}); pip install it, or name an installed one (dialect+driver://...)") from None
    except Exception:
        return  # anything else is the connection's to report


class Storage:
    """The study (created or loaded) and its lock; built whole by the constructor."""

    def __init__(self, url: str, study_name: str, direction: str, sampler: Any, *,
                 heartbeat: Optional[int] = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        check_url(url)
        url = driver_url(url)
        self.lock_path, self._pg = None, None
        journal = journal_file(url)
        self._journal_lock = journal_lock(journal) if journal else None
        kwargs, db = None, None
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///"):])
            if (problem := sqlite_problem(db)) is not None:
                raise RunnerError(problem)
            self.lock_path = db.with_name(db.name + ".lock")
            kwargs = {"connect_args": {"timeout": 120}}
        elif url.startswith("postgresql"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._pg = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.key = zlib.crc32(study_name.encode())
        self.locked = self.lock_path is not None or self._pg is not None or journal is not None
        agreed = None
        with self.critical(), quiet_heartbeat_warnings():  # two runners creating the tables at once collide
            if db is not None:  # WAL (kept in the file): in rollback mode a commit waits for all readers, and
                # 16 runners spent most of a sweep waiting (benchmarks/README.md, "Cost at scale"). WAL
                # needs all processes on one host: a network file system is refused already.
                with contextlib.closing(sqlite3.connect(db, timeout=120)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
            for _ in range(2):  # a second time only to take the sweep's own interval
                self.heartbeat = heartbeat or agreed or DEFAULT_HEARTBEAT_S
                self.storage = journal_storage(journal, self.heartbeat, GRACE_BEATS * self.heartbeat) \
                    if journal else optuna.storages.RDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=self.heartbeat,
                        grace_period=GRACE_BEATS * self.heartbeat)
                self.study = optuna.create_study(storage=self.storage, study_name=study_name, direction=direction,
                                                 sampler=sampler, load_if_exists=True)
                agreed = self.study.user_attrs.get(HEARTBEAT_ATTR)
                if agreed is None:
                    self.study.set_user_attr(HEARTBEAT_ATTR, self.heartbeat)
                if agreed in (None, self.heartbeat):
                    break
                if heartbeat is not None:
                    raise RunnerError(f"--heartbeat {heartbeat}: the runners of this sweep beat every {agreed} s (set "
                                      "when it was created), and all must agree, or one would take another's live "
                                      f"runs for dead; give --heartbeat {agreed} or leave it out")
        self.study_id = self.storage.get_study_id_from_name(study_name)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        if self.lock_path is not None:
            from filelock import FileLock

            with FileLock(self.lock_path):
                yield
        elif self._pg is not None:
            import sqlalchemy

            with self._pg.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        elif self._journal_lock is not None:
            self._journal_lock.acquire()
            try:
                yield
            finally:
                with contextlib.suppress(RuntimeError):  # broken by another runner after its grace period
                    self._journal_lock.release()
        else:
            yield

    def close(self) -> None:
        """Close the connections: the last one folds an SQLite WAL back into optuna.db, so the sweep
        directory holds one file between runs (a copy or backup of optuna.db alone is whole)."""
        if hasattr(self.storage, "remove_session"):
            self.storage.remove_session()
        for engine in (getattr(self.storage, "engine", None), self._pg):
            if engine is not None:
                engine.dispose()

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False)

    def set_attrs(self, number: int, attrs: dict) -> None:
        """Set user attributes of trial `number` by number (Optuna refuses once it is finished)."""
        trial_id = self.trial_id(number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def stale_trial_ids(self) -> list[int]:
        """RUNNING trials whose heartbeat is older than the grace period: the storage's own check
        (BaseHeartbeat._get_stale_trial_ids, the one `fail_stale_trials` uses; both storages here
        implement it, tests/test_slurm.py fails if it moves). Call it inside critical()."""
        return self.storage._get_stale_trial_ids(self.study_id)
