"""`sweep.*`: the settings a sweep file's command puts on the CLI's command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class SweepOptions:
    """Settings that sweep files put on the command line.

    Args:
        metric: the sweep metric, logged once per validation epoch (sweep_history.jsonl too);
            default: run.monitor.
        objective: weights of a combined objective logged as `metric`, e.g.
            {"val/auroc": 0.5, "val/balanced_acc": 0.5}.
        when: conditional parameters "CHILD:PARENT=V1|V2": CHILD's command-line value is
            applied only when PARENT has one of the values (W&B sweeps have no conditions).
    """

    metric: Optional[str] = None
    objective: Optional[dict[str, float]] = None
    when: Optional[list[str]] = None
