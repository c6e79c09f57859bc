"""`python -m sweeps run SWEEP.yaml`: the same W&B sweep file, no W&B server, Optuna for
sampling and storage.

Methods: grid -> every point of the product of the parameters' values, in W&B's order, each
run once (int_uniform and q_uniform are enumerated as W&B's grid does); the points are
enqueued into the study one at a time by the runner (the study's sampler is Optuna's
GridSampler over the same space) so that a point held by another runner or done before a
restart is never run twice. random -> RandomSampler(seed). bayes -> TPESampler(seed,
multivariate=True), Optuna's model-based sampler (W&B uses a Gaussian process; both model
the best value of each run's history).

Storage: sweep.yaml, optuna.db (or --storage URL) and runs/NNNN/ under the sweep directory;
one trial per run with the run's facts in user_attrs (see README, "Offline sweeps").
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from sweeps.agent import agent_argv
from sweeps.history import HISTORY_FILE, best_of, read_history, write_json_atomic
from sweeps.hyperband import hyperband_stop
from sweeps.launch import child_env, gpu_slots, prepare_sweep
from sweeps.progress import Progress, format_params
from sweeps.space import RunnerError, build_space, make_sampler

KILL_AFTER_S = 30.0  # as the W&B agent: SIGKILL this long after SIGTERM
POLL_S = 0.5  # how often running runs are checked (exit, history, hyperband)
ORPHAN_GRACE_S = 60.0  # a RUNNING trial with no owner recorded is left alone this long
DEFAULT_COUNT = 10
COUNTED = ("finished", "stopped", "failed")  # runs that count towards --count once done



# ---- storage, ownership and the critical section ---------------------------------------------


def _proc_start(pid: int) -> Optional[str]:
    """Start time of a process (Linux), so that a reused pid is not taken for the old process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: Optional[dict]) -> bool:
    if not owner or not owner.get("pid"):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = owner.get("start")
    return start is None or _proc_start(owner["pid"]) in (None, start)


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; use psycopg2 when only that is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


class Storage:
    """The Optuna study plus a lock around "count, then ask": a file lock next to a SQLite
    database, an advisory lock on PostgreSQL; elsewhere every asked trial is re-checked and
    cancelled as "surplus" when it would exceed --count or repeat a grid point."""

    def __init__(self, url: str, study_name: str, direction: str, sampler) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = driver_url(url)
        self.url, self.lock_path, self._pg = url, None, None
        kwargs = None
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///"):])
            self.lock_path = db.with_name(db.name + ".lock")
            kwargs = {"connect_args": {"timeout": 120}}
        elif url.startswith("postgresql"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._pg = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.key = zlib.crc32(study_name.encode())
        self.locked = self.lock_path is not None or self._pg is not None
        with self.critical():  # two runners creating the tables at once collide
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            self.study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                             sampler=sampler, load_if_exists=True)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        if self.lock_path is not None:
            import fcntl

            with open(self.lock_path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        elif self._pg is not None:
            import sqlalchemy

            with self._pg.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        else:
            yield

    def set_attrs(self, trial_id: int, attrs: dict) -> None:
        for key, value in attrs.items():
            self.study._storage.set_trial_user_attr(trial_id, key, value)


def counts_towards(t) -> bool:
    """Launched runs: running, or done and not interrupted/surplus."""
    from optuna.trial import TrialState

    if t.state == TrialState.RUNNING:
        return t.user_attrs.get("state") != "surplus"
    return t.state.is_finished() and t.user_attrs.get("state") in COUNTED


# ---- runs -----------------------------------------------------------------------------------


def failure_reason(log: Path, code: int) -> str:
    """The `error:` line, else the last line of a traceback, else the exit code."""
    try:
        lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if tb:
        tail = [ln for ln in lines[tb[-1] + 1:] if ln and not ln.startswith((" ", "\t"))]
        if tail:
            return tail[-1]
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"


@dataclass
class Job:
    trial: Any  # optuna.trial.Trial
    proc: subprocess.Popen
    slot: int  # index into the runner's slots
    run_dir: Path
    attrs: dict
    started: float = field(default_factory=time.monotonic)
    stop_reason: Optional[str] = None
    term_at: Optional[float] = None
    interrupted: bool = False
    history: list = field(default_factory=list)

    def terminate(self) -> None:
        """SIGTERM to the run's main process only, as the W&B agent does."""
        if self.term_at is None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            self.term_at = time.monotonic()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def find_root(sweep: dict, sweep_file: Optional[str]) -> Path:
    program = Path(str(sweep.get("program") or "cli.py"))
    if program.is_absolute():
        if program.is_file():
            return program.parent
        raise RunnerError(f"program {program} of the sweep does not exist")
    candidates = [Path.cwd()]
    if sweep_file:
        candidates += list(Path(sweep_file).resolve().parents)
    for root in candidates:
        if (root / program).is_file():
            return root.resolve()
    raise RunnerError(f"program {program} of the sweep not found in {Path.cwd()} or above the sweep file; "
                      "run from the repository root")


# ---- the runner -----------------------------------------------------------------------------


class Runner:
    def __init__(self, sweep: dict, args: argparse.Namespace, sweep_dir: Path, root: Path) -> None:
        self.sweep, self.args, self.sweep_dir, self.root = sweep, args, sweep_dir, root
        metric = sweep.get("metric") or {}
        if not metric.get("name"):
            raise RunnerError("the sweep has no metric.name; the offline runner ranks runs by it")
        self.metric, self.goal = str(metric["name"]), str(metric.get("goal", "minimize"))
        self.space = build_space(sweep)
        self.early = sweep.get("early_terminate")
        self.me = _me()
        self.jobs: dict[int, Job] = {}
        self.failures_in_row = 0
        self.stopping: Optional[str] = None  # why no more runs are launched
        self.exit_code = 0
        self.best: Optional[tuple[float, dict, str]] = None

    # -- storage
    def open(self, url: str, study_name: str) -> None:
        direction = "maximize" if self.goal == "maximize" else "minimize"
        self.store = Storage(url, study_name, direction, make_sampler(self.space, self.args.seed))
        self.study = self.store.study

    def trials(self) -> list:
        return self.study.get_trials(deepcopy=False)

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
                self.store.set_attrs(t._trial_id, {k: attrs[k] for k in ("state", "history", "reason")})
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

        for _ in range(len(self.space.grid_points()) + 2 if self.space.method == "grid" else 3):
            with self.store.critical():
                trials = self.trials()
                if sum(map(counts_towards, trials)) >= self.count:
                    return None
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if self.space.method == "grid" and not waiting:
                    held = {self.space.key(t.params) for t in trials
                            if counts_towards(t) or t.state == TrialState.WAITING}
                    left = [p for p in self.space.grid_points() if self.space.key(p) not in held]
                    if not left:
                        return None
                    self.study.enqueue_trial(left[0])
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
        env = child_env(XRAY_RUN_DIR=str(run_dir.resolve()), WANDB_MODE=self.args.wandb,  # offline|online|disabled
                        WANDB_PROJECT=self.args.project, WANDB_ENTITY=self.args.entity, CUDA_VISIBLE_DEVICES=slot)
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
        self.store.set_attrs(trial._trial_id, {k: v for k, v in attrs.items() if k != "runner"})
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
        self.store.set_attrs(job.trial._trial_id, {k: attrs[k] for k in
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
            if self.failures_in_row >= self.args.max_failures and not self.stopping:
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
    def run(self, slots: list[Optional[str]]) -> int:
        self.slots = slots
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


def _slots(args: argparse.Namespace) -> list[Optional[str]]:
    if args.gpus or os.environ.get("CUDA_VISIBLE_DEVICES", None) not in ("", "-1"):
        try:
            return gpu_slots(args.gpus, args.gpus_per_trial, args.workers)
        except ValueError as e:
            raise RunnerError(str(e)) from e
    return [None] * max(1, args.workers or 1)


def _mask_password(text: str) -> str:
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _same_sweep(a: dict, b: dict) -> bool:
    keys = ("method", "metric", "parameters", "early_terminate", "command")
    return all(a.get(k) == b.get(k) for k in keys)


def run_offline(sweep: dict, args: argparse.Namespace) -> int:
    sweep_file = getattr(args, "sweep_file", None)
    name = str(sweep.get("name") or (Path(sweep_file).stem if sweep_file else "sweep"))
    root = find_root(sweep, sweep_file)
    if args.cfg:
        cfg = Path(args.cfg)
        if not cfg.is_file() and (root / cfg).is_file():
            cfg = root / cfg
        if cfg.is_file() and cfg.resolve().parent != root / cfg.parent:
            cfg = cfg.resolve()  # the run starts in the repository root, not here
        args.cfg = str(cfg)
    sweep = prepare_sweep(sweep, args.cfg, args.gpus_per_trial)
    build_space(sweep)  # bad parameters fail before anything is written
    for option in ("count", "workers", "max_failures", "gpus_per_trial"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise RunnerError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    sweep_dir = Path(args.out or Path("sweep_runs") / name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep_yaml = sweep_dir / "sweep.yaml"
    if sweep_yaml.is_file():
        previous = yaml.safe_load(sweep_yaml.read_text()) or {}
        if not _same_sweep(previous, sweep):
            raise RunnerError(f"{sweep_dir} holds a different sweep ({sweep_yaml}); give another --out")
    runner = Runner(sweep, args, sweep_dir, root)
    live = not args.quiet and sys.stdout.isatty()
    slots = _slots(args)
    url = args.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    try:
        runner.open(url, name)
    except Exception as e:  # a bad URL, no server, a missing driver: one line, password masked
        with contextlib.suppress(OSError):
            sweep_dir.rmdir()  # only if still empty
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunnerError(f"cannot open sweep storage {_mask_password(url)}: {type(e).__name__}: "
                          f"{_mask_password(first)}") from None
    tmp = sweep_yaml.with_name(".sweep.yaml.tmp")
    tmp.write_text(yaml.safe_dump(sweep, sort_keys=False))
    os.replace(tmp, sweep_yaml)
    if runner.space.method == "grid":
        size = len(runner.space.grid_points())
        runner.count = min(args.count, size) if args.count else size
    else:
        runner.count = args.count or sweep.get("run_cap") or DEFAULT_COUNT
        if not args.count and not sweep.get("run_cap"):
            print(f"{sweep['method']} sweep: {runner.count} runs (--count N for more)")
    runner.progress = Progress(runner.count, live=live)
    print(f"sweep {name}: {sweep['method']}, {runner.count} runs, {len(slots)} at a time; "
          f"directory {sweep_dir}")
    code = runner.run(slots)
    if runner.stopping and code == 130:
        print(f"sweep {name} interrupted; rerun the same command to continue")
    if runner.best is not None:
        value, params, run_dir = runner.best
        print(f"best run: {runner.metric}={value:.6g} in {sweep_dir / run_dir}")
        for key, val in params.items():
            print(f"  {key}: {val}")
    else:
        print("no run finished with a value of the sweep metric")
    print(f"sweep directory: {sweep_dir}  (python -m sweeps best {sweep_dir})")
    return code
