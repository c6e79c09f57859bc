"""How many threads each of several processes that share the CPU gets: used by the offline
runner (parallel runs) and by cross-validated runs (parallel folds)."""

from __future__ import annotations

import os
from typing import Optional


def cpu_threads(slots: list[Optional[str]]) -> Optional[str]:
    """OMP_NUM_THREADS for each of several runs that share the CPU (no GPU slots): the cores
    split between them, since N runs that each start one thread per core slow each other down
    (on two cores `make demo` took 2.4 minutes as two runs of one thread each, 3.2 minutes as
    one run of two threads at a time). None leaves the variable alone: GPU runs, one run at a
    time, or a value the user set."""
    if "OMP_NUM_THREADS" in os.environ or len(slots) < 2 or any(s is not None for s in slots):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return str(max(1, cores // len(slots)))
