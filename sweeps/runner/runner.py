"""The offline runner's loop: ask Optuna for trials, launch runs into free slots, poll them,
apply hyperband, record results; recover what a dead runner left behind."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sweeps.contract.history import HISTORY_FILE, best_of, read_history
from sweeps.files.io import write_json_atomic
from sweeps.hyperband import hyperband_stop
from sweeps.runner.jobs import KILL_AFTER_S, Job, _alive, _me, _proc_start, failure_reason
from sweeps.runner.launch import agent_argv, child_env
from sweeps.runner.progress import Progress, format_params
from sweeps.runner.space import Space
from sweeps.runner.storage import Storage

POLL_S = 0.5  # how often running runs are checked (exit, history, hyperband)
ORPHAN_GRACE_S = 60.0  # a RUNNING trial with no owner recorded is left alone this long
COUNTED = ("finished", "stopped", "failed")  # runs that count towards --count once done


def counts_towards(t) -> bool:
    """Launched runs: running, or done and not interrupted/surplus."""
    from optuna.trial import TrialState

    if t.state == TrialState.RUNNING:
        return t.user_attrs.get("state") != "surplus"
    return t.state.is_finished() and t.user_attrs.get("state") in COUNTED


@dataclass(frozen=True)
class LaunchSettings:
    """How runs are launched and when the sweep gives up."""

    wandb: str = "offline"  # WANDB_MODE of the runs: offline | online | disabled
    project: Optional[str] = None
    entity: Optional[str] = None
    max_failures: int = 5  # failures in a row that stop the sweep


class Runner:
    """Runs trials of `store`'s study in `slots` (CUDA_VISIBLE_DEVICES per slot, None: CPU)
    until `count` runs are done; built whole by its constructor."""

    def __init__(self, sweep: dict, space: Space, store: Storage, *, sweep_dir: Path, root: Path,
                 slots: list[Optional[str]], count: int, progress: Progress, settings: LaunchSettings) -> None:
        self.sweep, self.space, self.store, self.study = sweep, space, store, store.study
        self.sweep_dir, self.root, self.slots, self.count = sweep_dir, root, slots, count
        self.progress, self.settings = progress, settings
        metric = sweep["metric"]
        self.metric, self.goal = str(metric["name"]), str(metric.get("goal", "minimize"))
        self.early = sweep.get("early_terminate")
        self.me = _me()
        self.jobs: dict[int, Job] = {}
        self.failures_in_row = 0
        self.stopping: Optional[str] = None  # why no more runs are launched
        self.exit_code = 0
        self.best: Optional[tuple[float, dict, str]] = None

    def trials(self) -> list:
        return self.store.trials()

    def recover(self) -> None:
        """Trials left RUNNING by a runner that is gone: stop their run if it still goes,
        mark them interrupted (FAIL) and enqueue their parameters again."""
        from optuna.trial import TrialState

        now = time.time()
        with self.store.critical():
            for t in self.trials():
                if t.state != TrialState.RUNNING:
                    continue
                owner = t.user_attrs.get("runner")
                if owner is None:
                    started = t.datetime_start.timestamp() if t.datetime_start else now
                    if now - started < ORPHAN_GRACE_S:
                        continue
                elif owner.get("host") != self.me["host"] or _alive(owner):
                    continue  # another runner's, alive or on another machine
                child = t.user_attrs.get("child")
                if _alive(child):
                    self._stop_orphan(child["pid"])
                run_dir = self.sweep_dir / t.user_attrs.get("run_dir", "")
                history = read_history(run_dir / HISTORY_FILE, self.metric) if t.user_attrs.get("run_dir") else []
                attrs = dict(t.user_attrs, state="interrupted", history=history,
                             reason="the runner ended while the run was going; it runs again")
                self.store.set_attrs(t.number, {k: attrs[k] for k in ("state", "history", "reason")})
                if (run_dir / "run.json").is_file():
                    write_json_atomic(run_dir / "run.json", attrs)
                self.study.tell(t.number, state=TrialState.FAIL)
                self.study.enqueue_trial(dict(t.params), user_attrs={"rerun_of": t.number})
                self.progress.event(f"run {t.number:04d} was interrupted; its parameters run again")

    @staticmethod
    def _stop_orphan(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + KILL_AFTER_S
        while time.monotonic() < deadline and _alive({"pid": pid}):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def next_trial(self):
        """A new trial to run, or None when --count is reached or the grid is done."""
        from optuna.trial import TrialState

        for _ in range(self.space.grid_size() + 2 if self.space.method == "grid" else 3):
            with self.store.critical():
                trials = self.trials()
                if sum(map(counts_towards, trials)) >= self.count:
                    return None
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if self.space.method == "grid" and not waiting:
                    held = {self.space.key(t.params) for t in trials
                            if counts_towards(t) or t.state == TrialState.WAITING}
                    point = next((p for p in self.space.grid_points() if self.space.key(p) not in held), None)
                    if point is None:
                        return None
                    self.study.enqueue_trial(point)
                trial = self.study.ask(self.space.distributions)
                trial.set_user_attr("runner", self.me)
                surplus = self._surplus(trial)
                if surplus is None:
                    return trial
                trial.set_user_attr("state", "surplus")
                trial.set_user_attr("reason", surplus)
                self.study.tell(trial, state=TrialState.FAIL)
                if "count" in surplus:
                    return None
        return None

    def _surplus(self, trial) -> Optional[str]:
        """Without a lock two runners may ask at once: the later trial number yields."""
        if self.store.locked:
            return None
        earlier = [t for t in self.trials() if t.number < trial.number and counts_towards(t)]
        if len(earlier) >= self.count:
            return "over --count (another runner launched the last run)"
        key = self.space.key(trial.params)
        if self.space.method == "grid" and any(self.space.key(t.params) == key for t in earlier):
            return "grid point already taken by another runner"
        return None

    # -- runs
    def launch(self, trial, index: int) -> None:
        slot = self.slots[index]
        params = self.space.values(trial.params)
        argv = agent_argv(self.sweep, params)
        number = trial.number
        run_dir = self.sweep_dir / "runs" / f"{number:04d}"
        for i in itertools.count(2):
            try:
                run_dir.mkdir(parents=True)
                break
            except FileExistsError:
                run_dir = self.sweep_dir / "runs" / f"{number:04d}-r{i}"
        env = child_env(XRAY_RUN_DIR=str(run_dir.resolve()), WANDB_MODE=self.settings.wandb,
                        WANDB_PROJECT=self.settings.project, WANDB_ENTITY=self.settings.entity,
                        CUDA_VISIBLE_DEVICES=slot)
        with open(run_dir / "output.log", "wb") as log:
            proc = subprocess.Popen(argv, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        attrs = {
            "run_dir": os.path.relpath(run_dir, self.sweep_dir), "state": "running", "reason": None,
            "history": [], "argv": argv, "exit_code": None, "wall_s": 0.0,
            "params": json.loads(json.dumps(params, default=str)),
            "runner": self.me, "child": {"pid": proc.pid, "start": _proc_start(proc.pid)},
            "slot": slot,
        }
        self.store.set_attrs(trial.number, {k: v for k, v in attrs.items() if k != "runner"})
        write_json_atomic(run_dir / "run.json", dict(attrs, trial=number))
        self.jobs[number] = Job(trial, proc, index, run_dir, attrs)
        where = f" on GPU {slot}" if slot else ""
        self.progress.event(f"run {number:04d} started{where}: {format_params(params)}")

    def poll(self) -> None:
        for number, job in list(self.jobs.items()):
            code = job.proc.poll()
            history = read_history(job.run_dir / HISTORY_FILE, self.metric)
            if history != job.history:
                job.history = history
                with contextlib.suppress(Exception):  # a busy database only delays the live view
                    job.trial.set_user_attr("history", history)
            if code is not None:
                self.finish(job, code)
                del self.jobs[number]
            elif job.term_at is not None and time.monotonic() - job.term_at > KILL_AFTER_S:
                job.kill_group()
                job.term_at = math.inf  # killed once
        if self.early and self.jobs:
            self.apply_hyperband()

    def apply_hyperband(self) -> None:
        histories = {t.number: t.user_attrs.get("history") or [] for t in self.trials()}
        histories.update({n: job.history for n, job in self.jobs.items()})
        candidates = [n for n, job in self.jobs.items() if job.stop_reason is None and not job.interrupted]
        for decision in hyperband_stop(histories, candidates, self.early, self.goal):
            job = self.jobs[decision.run]
            job.stop_reason = decision.reason(self.metric, self.goal)
            job.terminate()
            self.progress.event(f"run {decision.run:04d} stopping: {job.stop_reason}")

    def finish(self, job: Job, code: int) -> None:
        from optuna.trial import TrialState

        job.kill_group()  # nothing of a finished run may linger (DDP children, GPU memory)
        history = read_history(job.run_dir / HISTORY_FILE, self.metric)
        by_us = job.term_at is not None
        if job.interrupted:
            state, reason = "interrupted", "the runner was interrupted; the run goes again on the next start"
        elif code == 0 or (by_us and code < 0 and job.stop_reason):
            state = "stopped" if job.stop_reason else "finished"
            reason = job.stop_reason
            if code < 0:
                reason = f"{reason} (did not exit within {KILL_AFTER_S:g} s of SIGTERM; killed)"
        else:
            state, reason = "failed", failure_reason(job.run_dir / "output.log", code)
        value = best_of(history, self.goal) if state in ("finished", "stopped") else None
        attrs = dict(job.attrs, state=state, reason=reason, history=history, exit_code=code,
                     wall_s=round(time.monotonic() - job.started, 3))
        write_json_atomic(job.run_dir / "run.json", dict(attrs, trial=job.trial.number, value=value))
        self.store.set_attrs(job.trial.number, {k: attrs[k] for k in
                                                   ("state", "reason", "history", "exit_code", "wall_s")})
        if value is None:
            self.study.tell(job.trial, state=TrialState.FAIL)
        else:
            self.study.tell(job.trial, value)
        if state == "interrupted":
            self.study.enqueue_trial(dict(job.trial.params), user_attrs={"rerun_of": job.trial.number})
        number = f"run {job.trial.number:04d}"
        shown = f" {self.metric}={value:.4g}" if value is not None else ""
        self.progress.event(f"{number} {state}{shown}" + (f": {reason}" if reason else ""))
        if state == "failed":
            self.failures_in_row += 1
            if self.failures_in_row >= self.settings.max_failures and not self.stopping:
                self.stopping = f"{self.failures_in_row} runs failed in a row (--max-failures)"
                self.exit_code = 1
                self.progress.event(f"stopping the sweep: {self.stopping}; last reason: {reason}")
        elif state in ("finished", "stopped"):
            self.failures_in_row = 0

    def refresh(self) -> None:
        from optuna.trial import TrialState

        counts = {"finished": 0, "stopped": 0, "failed": 0, "running": 0}
        best = None
        for t in self.trials():
            state = t.user_attrs.get("state")
            if t.state == TrialState.RUNNING and state == "running":
                counts["running"] += 1
            elif state in COUNTED and t.state.is_finished():
                counts[state] += 1
            if t.state == TrialState.COMPLETE and t.value is not None:
                better = best is None or (t.value > best[0] if self.goal == "maximize" else t.value < best[0])
                if better:
                    best = (t.value, t.user_attrs.get("params") or t.params, t.user_attrs.get("run_dir", ""))
        self.best = best
        self.progress.update(counts, best)

    # -- main loop
    def run(self) -> int:
        slots = self.slots
        def interrupt(signum, frame):
            if self.stopping and self.stopping.startswith("interrupted"):
                for job in self.jobs.values():
                    job.kill_group()
                return
            self.stopping = "interrupted; rerun the same command to continue"
            self.exit_code = 130
            for job in self.jobs.values():
                job.interrupted = True
                job.terminate()
            self.progress.event(f"{signal.Signals(signum).name}: stopping the runs (again to kill them)")

        old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.recover()
            exhausted = False
            last_refresh = 0.0
            while True:
                self.poll()
                busy = {job.slot for job in self.jobs.values()}
                free = [i for i in range(len(slots)) if i not in busy]
                while free and not exhausted and not self.stopping:
                    trial = self.next_trial()
                    if trial is None:
                        exhausted = True
                        break
                    self.launch(trial, free.pop(0))
                if time.monotonic() - last_refresh > 2:
                    self.refresh()
                    last_refresh = time.monotonic()
                if not self.jobs and (exhausted or self.stopping):
                    break
                time.sleep(POLL_S)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            for job in self.jobs.values():  # only on an unexpected error: leave nothing behind
                job.kill_group()
        self.refresh()
        self.progress.close()
        return self.exit_code


