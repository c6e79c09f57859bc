"""What a dead runner left behind, cleaned up by any live runner on any host with Optuna's
heartbeat (no process table, no host names): trials whose heartbeat stopped are failed by
`fail_stale_trials` and enqueued again, to continue from their checkpoint, by the stale-trial
callback (liveness.RetryStaleTrials). A trial that never got a heartbeat (its runner died
between asking for it and the first beat, or a runner of an older version left it) is failed
here after ORPHAN_GRACE_S."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from rundir.layout import RUN_RECORD
from sweeps.files.io import write_json_atomic
from sweeps.runner.liveness import retry_attrs
from sweeps.runner.storage import Storage

ORPHAN_GRACE_S = 60.0  # a RUNNING trial that never got a heartbeat is left alone this long


def recover(store: Storage, sweep_dir: Path, own: set[int]) -> tuple[list[Any], list[Any]]:
    """(the trials failed and enqueued again now, every trial of the study afterwards)."""
    from optuna.trial import TrialState

    now = time.time()
    with store.critical():  # one runner retries each dead trial
        store.fail_stale()
        for t in store.trials():
            if t.state != TrialState.RUNNING or t.number in own or "heartbeat" in (t.user_attrs.get("runner") or {}):
                continue
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if now - started >= ORPHAN_GRACE_S:
                store.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                run_dir = t.user_attrs.get("run_dir")
                run_path = t.user_attrs.get("run_path") or (str(sweep_dir / run_dir) if run_dir else None)
                store.study.enqueue_trial(dict(t.params), user_attrs=retry_attrs(t.number, run_path))
                store.retry.retried.append(t)
        trials = store.trials()
    retried = store.retry.pop()
    for t in retried:
        mark_interrupted(t.user_attrs)
    return retried, trials


def mark_interrupted(attrs: dict) -> None:
    """The dead run's run.json, when this host can reach it, says what became of it."""
    path = Path(attrs.get("run_path") or "/nonexistent") / RUN_RECORD
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text())
        if record.get("state") == "running":
            record.update(state="interrupted", reason="its runner died; the run continues in another trial")
            write_json_atomic(path, record)
