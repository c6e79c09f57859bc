"""sweep_history.jsonl: one JSON line per validation epoch of a run, written by the run and
read by the offline runner, the analysis and the report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

HISTORY_FILE = "sweep_history.jsonl"


def append_history(path: Path, row: dict) -> None:
    """Append one row and make it durable: a runner may read it, or the run be killed, next."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(path: Path, metric: str) -> list[Optional[float]]:
    """The sweep metric per validation epoch; None where it was not finite."""
    out: list[Optional[float]] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            value = json.loads(line).get(metric)
        except (json.JSONDecodeError, AttributeError):
            continue  # a line being written right now
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value) if math.isfinite(value) else None)
    return out


def best_of(history: list, goal: str) -> Optional[float]:
    """The best finite value of a history: what W&B's bayes uses for a run."""
    values = [v for v in history if isinstance(v, (int, float)) and math.isfinite(v)]
    return (max(values) if goal == "maximize" else min(values)) if values else None
