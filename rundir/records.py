"""Reading what a run left: whether its checkpoint can be continued from, and why it failed.
Used by the CLI (`fit --ckpt_path`), the CV parent (folds) and the offline runner (trials)."""

from __future__ import annotations

import signal
import zipfile
from pathlib import Path
from typing import Optional

LIGHTNING_NAMES = ("last", "best", "hpc")  # ckpt_path values Lightning resolves itself


def checkpoint_problem(ckpt_path: str | Path, *, load: bool = True) -> Optional[str]:
    """Why a checkpoint cannot be resumed from (missing, truncated, corrupt), or None.
    torch.save writes a zip archive with a CRC per entry: the archive is checked whole, which
    needs no torch (the runner stops there, `load=False`); then it is loaded memory-mapped
    (tensors are not read), as Lightning will load it."""
    text = str(ckpt_path)
    if text in LIGHTNING_NAMES or text.startswith("registry"):
        return None  # Lightning finds these itself
    path = Path(text).expanduser()
    if path.is_dir():
        return None  # a sharded checkpoint (FSDP, DeepSpeed): Lightning's own to check
    if not path.is_file():
        return f"{path} does not exist"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"{path}: entry {bad} is corrupt"
        if load:
            import torch

            torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # any reason means the same: this file cannot be resumed from
        return f"{path}: {type(e).__name__}: {e}"
    return None


def failure_reason(log: Path, code: int) -> str:
    """Why a run failed, from its output.log: the `error:` line cli.py prints, else the last
    line of a traceback, else the exit code or signal."""
    try:
        lines = [ln.rstrip() for ln in Path(log).read_text(errors="replace").splitlines()]
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
