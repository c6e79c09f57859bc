"""The in-run contract: what runs inside a training process started by a W&B agent or the
offline runner (stop flag and SIGTERM handling, the runner's lifeline, run guard, sweep
metric, conditional parameters, history file, the run's own options).

cli.py imports this unit, models and datamodules only; nothing here imports the
orchestration (sweep files, runner, analysis). Names load on first use, so that cli.py can
install the SIGTERM flag (`sweeps.contract.signals`) before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StopSignal": "signals",
    "RunGuard": "guard",
    "RunStopped": "guard",
    "Diverged": "guard",
    "SweepMetric": "metric",
    "objective_value": "metric",
    "apply_conditions": "conditions",
    "format_condition": "conditions",
    "parse_condition": "conditions",
    "HISTORY_FILE": "history",
    "append_history": "history",
    "read_history": "history",
    "best_of": "history",
    "SweepOptions": "options",
    "LIFELINE_ENV": "lifeline",
    "watch_runner": "lifeline",
    "truncate_history": "history",
    "TRAINING_FILE": "history",
    "write_training": "history",
    "training_done": "history",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
