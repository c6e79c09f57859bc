"""The offline runner's loop: claim trials (trials.py), launch runs into free slots, poll them,
apply hyperband, record results; give back what a dead runner left (recovery.py) and what this
one interrupts, so that the same trial continues from its checkpoint (jobs.resume_point)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from optuna.trial import TrialState

import rundir.launcher as launcher
import sweeps.runner.prune as prune
import sweeps.runner.recovery as recovery
import sweeps.runner.trials as trials
from rundir.grace import AGENT_KILL_AFTER_S
from rundir.launcher import POLL_S  # how often running runs are checked (exit, history, hyperband)
from rundir.layout import COMPLETED, HISTORY_FILE, LAST_CHECKPOINT, RUN_RECORD, TRAINING_FILE
from sweeps.contract.history import best_of, read_history, training_done
from sweeps.contract.lifeline import LIFELINE_ENV
from sweeps.files.io import write_json_atomic
from sweeps.hyperband import hyperband_stop
from sweeps.runner.jobs import Job, fresh_run_dir, resume_point
from sweeps.runner.launch import agent_argv
from sweeps.runner.liveness import Heartbeat, Lifeline
from sweeps.runner.placement import GpuMemoryGuard
from sweeps.runner.progress import Progress, format_params, tally
from sweeps.runner.space import Space
from sweeps.runner.storage import GRACE_BEATS, Storage


@dataclass(frozen=True)
class LaunchSettings:
    """How runs are launched and when the sweep gives up."""

    wandb: str = "offline"  # WANDB_MODE of the runs: offline | online | disabled
    project: Optional[str] = None
    entity: Optional[str] = None
    max_failures: int = 5  # failures in a row that stop the sweep
    launcher: tuple[str, ...] = ()  # before each run's argv: an srun step across nodes (runner/slurm.py)


class Runner:
    """Runs trials of `store`'s study in `slots` (CUDA_VISIBLE_DEVICES per slot, None: CPU)
    until `count` runs are done; built whole by its constructor."""

    def __init__(self, sweep: dict, space: Space, store: Storage, *, sweep_dir: Path, root: Path,
                 slots: list[Optional[str]], count: int, progress: Progress, settings: LaunchSettings,
                 gpu_guard: Optional[GpuMemoryGuard] = None) -> None:
        self.sweep, self.space, self.store, self.study = sweep, space, store, store.study
        self.sweep_dir, self.root, self.slots, self.count = sweep_dir, root, slots, count
        self.progress, self.settings, self.gpu_guard = progress, settings, gpu_guard
        metric = sweep["metric"]
        self.metric, self.goal = str(metric["name"]), str(metric.get("goal", "minimize"))
        self.early = sweep.get("early_terminate")
        # Host and pid for people reading the study; the id tells this runner's claim from any other's.
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "id": uuid.uuid4().hex[:16]}
        self.jobs: dict[int, Job] = {}
        self.others = 0  # trials other runners are running (they may be given back to us)
        self.finished_at = 0.0  # time.monotonic() when our last run ended
        self.failures_in_row = 0
        self.stopping: Optional[str] = None  # why no more runs are launched
        self.signal: Optional[int] = None  # the signal that stopped the runner (SLURM requeues on SIGUSR1)
        self.exit_code = 0
        self.best: Optional[tuple[float, dict, str]] = None
        self._guard_noted: set[str] = set()

    def recover(self) -> None:
        """Give back what dead runners left (recovery.py); stop our own runs whose trial another
        runner gave back for want of our heartbeat: they continue elsewhere now."""
        released, all_trials = recovery.recover(self.store, set(self.jobs))
        for t in released:
            self.progress.event(f"run {t.number:04d} lost its runner (no heartbeat for "
                                f"{GRACE_BEATS * self.store.heartbeat} s); it continues from its checkpoint")
        now = {t.number: t for t in all_trials}
        for number, job in self.jobs.items():
            if number in now and not trials.owned_by(now[number], self.me) and not job.lost:
                job.lost = True  # its directory is the continuation's now: no last save, no run.json
                job.kill()
                self.progress.event(f"run {number:04d}: another runner found no heartbeat from this one and "
                                    "continues it; stopping it here")
        self.others = sum(t.state == TrialState.RUNNING and t.number not in self.jobs for t in all_trials)

    def next_trial(self):
        """A trial to run (trials.claim), or None when --count is reached or the grid is done."""
        for _ in range(self.space.grid_size() + 2 if self.space.method == "grid" else 3):
            with self.store.critical():
                trial = trials.claim(self.store, self.space, self.count, self.me, self.heart)
                why = trial and trials.surplus(self.store, self.space, self.count, trial)
                if not why:
                    return trial
                self.store.set_attrs(trial.number, {"state": "surplus", "reason": why})
                self.study.tell(trial, state=TrialState.FAIL)
                self.heart.discard(self.store.trial_id(trial.number))
                if "count" in why:
                    return None
        return None

    # -- runs
    def _free_slot(self) -> Optional[int]:
        busy = {job.slot for job in self.jobs.values()}
        for index, slot in enumerate(self.slots):
            why = self.gpu_guard.blocked(slot) if self.gpu_guard and index not in busy else None
            if why and "below" in why and slot not in self._guard_noted:
                self._guard_noted.add(slot)
                self.progress.event(f"waiting to start a run: {why}")
            if index not in busy and why is None:
                self._guard_noted.discard(slot)
                return index
        return None

    def launch(self, trial, index: int) -> None:
        slot = self.slots[index]
        params = self.space.values(trial.params)
        argv = agent_argv(self.sweep, params)
        number, trial_id = trial.number, self.store.trial_id(trial.number)
        if (old := self.jobs.pop(number, None)) is not None:  # given back for want of our heartbeat, then
            old.lost = True  # claimed here again before our check saw it: its process must not go on untracked
            old.kill()
            old.proc.wait()
        reported = max(self.store.storage.get_trial(trial_id).intermediate_values, default=-1) + 1  # continued: so far
        resumed, note = resume_point(trial.user_attrs.get("resume"))
        if resumed is not None and (resumed / LAST_CHECKPOINT).is_file():
            argv = [*argv, f"--ckpt_path={resumed / LAST_CHECKPOINT}"]  # the same parameters, the same directory
        run_dir = resumed or fresh_run_dir(self.sweep_dir, number)
        env = {"WANDB_MODE": self.settings.wandb, "WANDB_PROJECT": self.settings.project,
               "WANDB_ENTITY": self.settings.entity, LIFELINE_ENV: str(self.lifeline.read_fd)}
        run = launcher.start([*self.settings.launcher, *argv], run_dir, slot=index, slots=self.slots, cwd=self.root, env=env,
                             pass_fds=(self.lifeline.read_fd,))
        if self.gpu_guard:
            self.gpu_guard.started(slot)
        attrs = {
            "run_dir": os.path.relpath(run_dir, self.sweep_dir), "run_path": str(run_dir.resolve()),
            "state": "running", "reason": None, "history": [], "argv": argv, "exit_code": None, "wall_s": 0.0,
            "params": json.loads(json.dumps(params, default=str)), "resumed": resumed is not None,
            "runner": self.me, "child": {"pid": run.proc.pid}, "slot": slot,
        }
        self.store.set_attrs(trial.number, {k: v for k, v in attrs.items() if k != "runner"})
        write_json_atomic(run_dir / RUN_RECORD, dict(attrs, trial=number))
        self.jobs[number] = Job(proc=run.proc, slot=index, run_dir=run_dir, trial=trial, attrs=attrs,
                                trial_id=trial_id, reported=reported)
        where = f" on GPU {slot}" if slot else ""
        self.progress.event(f"run {number:04d} started{where}: {format_params(params)}"
                            + (f"; {note}" if note else ""))

    def poll(self) -> None:
        for number, job in list(self.jobs.items()):
            code = job.poll()
            self._read(job)
            if code is not None:
                self.finish(job, code)
                del self.jobs[number]
            elif job.overdue(AGENT_KILL_AFTER_S):
                job.kill()
                job.term_at = math.inf  # killed once
        if self.early and self.jobs:
            self.apply_hyperband()

    def _read(self, job: Job) -> None:
        """The run's history so far: live view, Optuna intermediate values, the after-fit mark."""
        history = read_history(job.run_dir / HISTORY_FILE, self.metric)
        if history != job.history:
            job.history = history
            with contextlib.suppress(Exception):  # a busy database only delays the live view
                job.trial.set_user_attr("history", history)
            for step in range(job.reported, len(history)):
                if history[step] is not None:  # learning curves in optuna-dashboard
                    with contextlib.suppress(Exception):
                        job.trial.report(history[step], step)
            job.reported = len(history)
        if history and not job.trained:
            job.trained = training_done(job.run_dir / TRAINING_FILE, len(history))

    def apply_hyperband(self) -> None:
        histories = {t.number: t.user_attrs.get("history") or [] for t in self.store.trials()}  # a continued run: one trial
        histories.update({n: job.history for n, job in self.jobs.items()})
        # A run that finished training is never cut: its test after fit would be lost.
        candidates = [n for n, job in self.jobs.items()
                      if job.stop_reason is None and not (job.interrupted or job.lost or job.trained)]
        for decision in hyperband_stop(histories, candidates, self.early, self.goal):
            job = self.jobs[decision.run]
            job.stop_reason = decision.reason(self.metric, self.goal)
            job.terminate()
            self.progress.event(f"run {decision.run:04d} stopping: {job.stop_reason}")

    def finish(self, job: Job, code: int) -> None:
        job.kill()  # nothing of a finished run may linger (DDP children, GPU memory)
        self.heart.discard(job.trial_id)
        self.finished_at = time.monotonic()
        self._read(job)
        state, reason = job.outcome(code)
        value = best_of(job.history, self.goal) if state in COMPLETED else None
        attrs = dict(job.attrs, state=state, reason=reason, history=job.history, exit_code=code,
                     wall_s=round(time.monotonic() - job.started, 3))
        number, done = job.trial.number, {k: attrs[k] for k in ("state", "reason", "history", "exit_code", "wall_s")}
        if not job.lost:
            with self.store.critical():  # still ours? then recorded, or given back in one write (trials.py)
                if state == "interrupted":
                    kept = trials.give_back(self.store, self.store.storage.get_trial(job.trial_id), done, self.me)
                else:
                    kept = trials.finish(self.store, job.trial, done, value, self.me)
            if kept:
                write_json_atomic(job.run_dir / RUN_RECORD, dict(attrs, trial=number, value=value))
            else:  # given back by another runner meanwhile (no heartbeat from us): it continues there
                job.lost, state, reason = True, "interrupted", "another runner found no heartbeat from this runner"
        shown = f" {self.metric}={value:.4g}" if value is not None and state != "interrupted" else ""
        self.progress.event(f"run {number:04d} {state}{shown}" + (f": {reason}" if reason else ""))
        prune.after_trial(self.store, self.sweep_dir, self.goal, self.progress.event)  # checkpoints (prune.py)
        if state == "failed":
            self.failures_in_row += 1
            if self.failures_in_row >= self.settings.max_failures and not self.stopping:
                self.stopping = f"{self.failures_in_row} runs failed in a row (--max-failures)"
                self.exit_code = 1
                self.progress.event(f"stopping the sweep: {self.stopping}; last reason: {reason}")
        elif state in COMPLETED:
            self.failures_in_row = 0

    def refresh(self) -> None:
        counts, self.best = tally(self.store.trials(), self.goal)
        self.progress.update(counts, self.best)

    # -- main loop
    def run(self) -> int:
        def interrupt(signum, frame):
            if self.stopping and self.stopping.startswith("interrupted"):
                for job in self.jobs.values():
                    job.kill()
                return
            self.stopping = "interrupted; rerun the same command to continue"
            self.signal = signum
            self.exit_code = 130
            for job in self.jobs.values():
                job.interrupted = True
                job.terminate()
            self.progress.event(f"{signal.Signals(signum).name}: stopping the runs (again to kill them)")

        old = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
        self.heart, self.lifeline = Heartbeat(self.store.storage, self.store.heartbeat), Lifeline()
        try:
            self.recover()
            exhausted, waiting_noted = False, False
            last_refresh = last_recover = time.monotonic()
            while True:
                self.poll()
                if time.monotonic() - last_recover >= self.store.heartbeat:
                    self.recover()  # a trial may have been given back: ask again
                    last_recover, exhausted = time.monotonic(), False
                while not exhausted and not self.stopping and (index := self._free_slot()) is not None:
                    trial = self.next_trial()
                    if trial is None:
                        exhausted = True
                        break
                    self.launch(trial, index)
                if time.monotonic() - last_refresh > 2:
                    self.refresh()
                    last_refresh = time.monotonic()
                if not self.jobs and exhausted and not self.stopping and last_recover < self.finished_at:
                    self.recover()  # before leaving: are other runners' runs still going?
                    last_recover, exhausted = time.monotonic(), False
                    continue
                if not self.jobs and (self.stopping or (exhausted and not self.others)):
                    break
                if not self.jobs and exhausted and not waiting_noted:
                    waiting_noted = True
                    self.progress.event(f"waiting for {self.others} run(s) of other runners: should one lose its "
                                        "runner, this runner runs it again")
                time.sleep(POLL_S)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            for job in self.jobs.values():  # only on an unexpected error: leave nothing behind
                job.kill()
            self.heart.close()
            self.lifeline.close()
        self.refresh()
        self.progress.close()
        return self.exit_code
