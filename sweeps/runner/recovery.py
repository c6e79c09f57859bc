"""Dead runners' trials, given back by any live runner on any host (README, "Sweeps without a W&B
server": Dead runners): a RUNNING trial whose heartbeat is older than the grace period goes back to
WAITING with its run directory (trials.give_back); Optuna's own `fail_stale_trials` would fail it,
and a finished trial can never run again. A trial never given a heartbeat waits ORPHAN_GRACE_S."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from rundir.layout import RUN_RECORD
from sweeps.files.io import write_json_atomic
from sweeps.runner.storage import Storage
from sweeps.runner.trials import give_back

ORPHAN_GRACE_S = 60.0  # a RUNNING trial that never got a heartbeat is left alone this long
DEAD = {"state": "interrupted", "reason": "its runner stopped; the run continues from its checkpoint"}


def recover(store: Storage, own: set[int]) -> tuple[list[Any], list[Any]]:
    """(the trials given back now, every trial of the study afterwards)."""
    now = time.time()
    with store.critical():  # one runner gives back each dead trial, and no runner claims it meanwhile
        dead = [store.storage.get_trial(i) for i in store.stale_trial_ids()]
        for t in store.trials():
            if t.state != TrialState.RUNNING or t.number in own or "heartbeat" in (t.user_attrs.get("runner") or {}):
                continue
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if now - started >= ORPHAN_GRACE_S:
                dead.append(t)
        released = [t for t in dead if give_back(store, t, DEAD)]
        trials = store.trials()
    for t in released:  # the dead run's run.json, when this host can reach it, says what became of it
        path = Path(t.user_attrs.get("run_path") or "/nonexistent") / RUN_RECORD
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if record.get("state") == "running":
                write_json_atomic(path, dict(record, **DEAD))
    return released, trials
