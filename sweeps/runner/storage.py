"""The Optuna study of an offline sweep, and the critical section around "count, then ask".

Optuna keeps trials (parameters, state, value, the run's facts in user_attrs) in any
SQLAlchemy database: a SQLite file next to the runs by default, PostgreSQL when several
machines share a sweep. Runners must agree on --count and never run a grid point twice, so
"count the launched runs, then ask for a trial" is done under a lock: a file lock next to a
SQLite database, an advisory lock on PostgreSQL; elsewhere the runner re-checks each asked
trial and cancels it as surplus (see Runner._surplus).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def mask_password(text: str) -> str:
    """`text` with the password of every URL in it masked by SQLAlchemy's own rendering
    (user:***@, :***@; user:p@ss@ and user:a/b@ too), and secret parameters masked
    (?password=***, sslpassword=, passwd=, pwd=, token=, secret=, key= ..., also libpq's `k=v`)."""
    return _SECRET.sub(r"\1\2***", _URL.sub(lambda m: _mask_url(m.group()), text))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,:;)\]]")  # not a trailing "." or ":"
_USERINFO = re.compile(r"^([^:]+://[^:@/]*:)[^\s]*@")  # up to the last @: a password may hold @ or /
_SECRET = re.compile(r"(?i)(?<![\w-])([\w-]*(?:password|passwd|pwd|secret|token|key|credential)[\w-]*)"
                     r"(\s*=\s*)([^\s&;'\"]+)")


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the pattern below still masks user:password@
        pass
    return _USERINFO.sub(r"\1***@", url)


class Storage:
    """The study (created or loaded) and its lock; built whole by the constructor."""

    def __init__(self, url: str, study_name: str, direction: str, sampler: Any) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = driver_url(url)
        self.url, self.lock_path, self._pg = url, None, None
        kwargs = None
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///"):])
            self.lock_path = db.with_name(db.name + ".lock")
            kwargs = {"connect_args": {"timeout": 120}}
        elif url.startswith("postgresql"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._pg = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.key = zlib.crc32(study_name.encode())
        self.locked = self.lock_path is not None or self._pg is not None
        with self.critical():  # two runners creating the tables at once collide
            self.storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            self.study = optuna.create_study(storage=self.storage, study_name=study_name, direction=direction,
                                             sampler=sampler, load_if_exists=True)
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
        else:
            yield

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False)

    def set_attrs(self, number: int, attrs: dict) -> None:
        """Set user attributes of trial `number`, in any state (Trial.set_user_attr needs a live trial)."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)
