"""sweep_history.jsonl: one JSON line per validation epoch of a run, read by the runner and the
analysis; training.json tells the runner when training is complete (what follows is
evaluation, which hyperband must not cut)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

from rundir.atomic import replacing, write_atomic
from rundir.layout import HISTORY_FILE, TRAINING_FILE

__all__ = ["HISTORY_FILE", "TRAINING_FILE", "append_history", "best_of", "read_history", "training_done",
           "truncate_history", "write_training"]


def append_history(path: Path, row: dict) -> None:
    """Append one row and make it durable: a runner may read it, or the run be killed, next."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rows(path: Path) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_history(path: Path, metric: str) -> list[Optional[float]]:
    """The sweep metric per validation epoch; None where it was not finite."""
    out: list[Optional[float]] = []
    for row in _rows(path):
        value = row.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value) if math.isfinite(value) else None)
    return out


def truncate_history(path: Path, from_epoch: int) -> int:
    """Drop the rows of epochs >= `from_epoch`: a run resumed from a
    checkpoint trains those epochs again, and its history must stay one row per epoch.
    Returns how many rows were dropped."""
    rows = _rows(path)  # none when there is no file
    kept = [r for r in rows if isinstance(r.get("epoch"), int) and r["epoch"] < from_epoch]
    if len(kept) == len(rows):
        return 0
    with replacing(path) as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    return len(rows) - len(kept)


def write_training(path: Path, epochs: Optional[int], done: bool) -> None:
    """training.json: the validations this run plans (None: not known) and whether training ended."""
    write_atomic(path, json.dumps({"epochs": epochs, "done": done}))


def training_done(path: Path, validations: int) -> bool:
    """Whether a run has finished training: it said so, or it has validated as often as it
    planned (its last epoch's row is there; the end of fit may be a moment away)."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    epochs = state.get("epochs") if isinstance(state, dict) else None
    return (isinstance(state, dict) and state.get("done") is True) or \
        (isinstance(epochs, int) and epochs > 0 and validations >= epochs)


def best_of(history: list, goal: str) -> Optional[float]:
    """The best finite value of a history: what W&B's bayes uses for a run."""
    values = [v for v in history if isinstance(v, (int, float)) and math.isfinite(v)]
    return (max(values) if goal == "maximize" else min(values)) if values else None
