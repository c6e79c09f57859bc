"""Reading and writing sweep files: the atomic writes every file of a sweep goes through
(readers never see half a file) and the one loader of W&B sweep files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml

from sweeps.errors import UsageError


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, with the permissions of any new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str))


def load_sweep(path: str | os.PathLike) -> dict:
    """A W&B sweep file as a dict; a clear error for a file that is missing or not a sweep."""
    try:
        sweep = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"Cannot read sweep file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise UsageError(f"Sweep file {path} is not valid YAML: {e}") from e
    if not isinstance(sweep, dict) or "parameters" not in sweep or "method" not in sweep:
        raise UsageError(f"Sweep file {path} lacks `method` and `parameters`; is it a W&B sweep file?")
    return sweep
