"""Which trial a runner runs next, and giving one back so that its run continues as the same trial
(README, "Sweeps without a W&B server": Resume, Dead runners). The trial goes from RUNNING back to
WAITING in one storage write, with its run directory in `user_attrs["resume"]`: Optuna allows it
(only finished trials are frozen), and `study.ask()` pops WAITING trials with a compare-and-set
(RDBStorage: SELECT ... FOR UPDATE and "RUNNING only from WAITING"; JournalStorage: the log's order
decides, a second RUNNING is rejected on replay), so exactly one runner, on any host, claims it
again with its number, parameters and directory. Every function here runs inside Storage.critical().
"""

from __future__ import annotations

from typing import Any, Optional

from optuna.trial import TrialState

from rundir.layout import COMPLETED
from sweeps.runner.liveness import quiet_heartbeat_warnings

ENDED = (*COMPLETED, "failed")  # a run's last states: counted towards --count, never continued


def counts_towards(t: Any) -> bool:
    """Launched runs: running, or done and not surplus. A trial given back (WAITING) counts
    again once it is claimed."""
    if t.state == TrialState.RUNNING:
        return t.user_attrs.get("state") != "surplus"
    return t.state.is_finished() and t.user_attrs.get("state") in ENDED


def owned_by(t: Any, me: dict) -> bool:
    """The trial is RUNNING and claimed by the runner `me` (Runner.me), not given back since."""
    return t.state == TrialState.RUNNING and (t.user_attrs.get("runner") or {}).get("id") == me["id"]


def give_back(store: Any, t: Any, attrs: dict, me: Optional[dict] = None) -> bool:
    """Return RUNNING trial `t` (a fresh FrozenTrial) to WAITING with `attrs` and the run
    directory to continue; False when it is no longer RUNNING (or, with `me`, no longer `me`'s).
    The attributes are written while it is still RUNNING, the state last: a runner waiting for
    it sees it running or claimable, never done (it would leave, and nobody would continue it)."""
    if t.state != TrialState.RUNNING or (me is not None and not owned_by(t, me)):
        return False
    trial_id = store.trial_id(t.number)
    run_path = t.user_attrs.get("run_path")
    resume = {"run_path": run_path, "of": t.number} if run_path else None
    store.set_attrs(t.number, dict(attrs, resume=resume))
    return store.storage.set_trial_state_values(trial_id, state=TrialState.WAITING)


def finish(store: Any, trial: Any, attrs: dict, value: Optional[float], me: dict) -> bool:
    """Record the end of `me`'s run of `trial`; False when the trial is no longer `me`'s."""
    if not owned_by(store.storage.get_trial(store.trial_id(trial.number)), me):
        return False
    store.set_attrs(trial.number, attrs)
    store.study.tell(trial, value, state=TrialState.FAIL if value is None else None)
    return True


def claim(store: Any, space: Any, count: int, me: dict, heart: Any) -> Optional[Any]:
    """A trial to run: one given back first (ask pops WAITING trials), else a new one (the
    next grid point, or the sampler's); None when --count is reached or the grid is done."""
    trials = store.trials()
    if sum(map(counts_towards, trials)) >= count:
        return None
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if space.method == "grid" and not waiting:
        held = {space.key(t.params) for t in trials if counts_towards(t) or t.state == TrialState.WAITING}
        point = next((p for p in space.grid_points() if space.key(p) not in held), None)
        if point is None:
            return None
        store.study.enqueue_trial(point)
    with quiet_heartbeat_warnings():
        trial = store.study.ask(space.distributions)
    heart.add(store.trial_id(trial.number))  # first beat before the owner record: an owned trial has one
    trial.set_user_attr("runner", dict(me, heartbeat=store.heartbeat))
    return trial


def surplus(store: Any, space: Any, count: int, trial: Any) -> Optional[str]:
    """Why a new trial must not run, on a storage without a lock (two runners may ask at once:
    the later trial number yields), or None. A trial given back was counted already: never."""
    if store.locked or "resume" in trial.user_attrs:
        return None
    earlier = [t for t in store.trials() if t.number < trial.number and counts_towards(t)]
    if len(earlier) >= count:
        return "over --count (another runner launched the last run)"
    key = space.key(trial.params)
    if space.method == "grid" and any(space.key(t.params) == key for t in earlier):
        return "grid point already taken by another runner"
    return None
