"""sweep_history.jsonl: one JSON line per validation epoch of a run, written by the run and
read by the offline runner, the analysis and the report. Two more lines tell the runner when
training is complete (what follows is evaluation, which hyperband must not cut): at the start
of training {"phase": "fit", "epochs": N} (the validations it will run, when known), and
after training {"phase": "after_fit"}."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

HISTORY_FILE = "sweep_history.jsonl"
FIT, AFTER_FIT = "fit", "after_fit"


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
    """Drop the rows of epochs >= `from_epoch` (and any after-fit mark): a run resumed from a
    checkpoint trains those epochs again, and its history must stay one row per epoch.
    Returns how many rows were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    rows = _rows(path)
    kept = [r for r in rows if "phase" not in r and isinstance(r.get("epoch"), int) and r["epoch"] < from_epoch]
    if len(kept) == len(rows):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(rows) - len(kept)


def mark_training_start(path: Path, epochs: Optional[int]) -> None:
    append_history(path, {"phase": FIT, "epochs": epochs})


def mark_training_done(path: Path, epoch: int) -> None:
    append_history(path, {"phase": AFTER_FIT, "epoch": epoch})


def training_done(path: Path, metric: str) -> bool:
    """Whether the run has finished training: it said so, or it has validated as many times as
    it planned (its last epoch's row is there; the after-fit line may be a moment away)."""
    rows = _rows(path)
    if any(r.get("phase") == AFTER_FIT for r in rows):
        return True
    planned = [r.get("epochs") for r in rows if r.get("phase") == FIT]
    epochs = planned[-1] if planned else None
    return isinstance(epochs, int) and epochs > 0 and sum(metric in r for r in rows) >= epochs


def best_of(history: list, goal: str) -> Optional[float]:
    """The best finite value of a history: what W&B's bayes uses for a run."""
    values = [v for v in history if isinstance(v, (int, float)) and math.isfinite(v)]
    return (max(values) if goal == "maximize" else min(values)) if values else None
