"""What a sweep costs as it grows (issue 22 item 4): 10 / 100 / 1,000 trials of the LCBench
surrogate program run by R runners (`python -m sweeps run`, one slot each) sharing one storage,
on SQLite and on PostgreSQL; then `best` and `report` on the sweep directory.

    nice -n 10 python benchmarks/sweep_scale.py                     # both storages, ~25 min on 2 cores
    python benchmarks/sweep_scale.py --sizes 3 --runners 2 --storages sqlite --out /tmp/s.json  # smoke

Each runner runs inside a probe (this file, `--probe`) that times, in the real runner: every
`Study.ask` (the project's per-trial seeded multivariate TPE), the wait for and the hold of the
runner's storage lock (`Storage.critical`), and every call into Optuna's RDBStorage (count, time,
exceptions: the contention), plus the runner's own CPU time (its runs' CPU apart). The program
(`lcbench.surrogate: toy`, 9 epochs, scaled sleeps) takes a fraction of a second, so what is
measured is the runner. PostgreSQL: a throw-away server in a temporary directory
(initdb/pg_ctl as tests/test_offline_runner.py starts one), stopped at the end.
Figures and growth ratios are printed; the raw JSON goes to --out (benchmarks/sweep_scale.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# RDBStorage methods that Optuna's _CachedStorage calls directly (trials are read through _get_trials)
PRIVATE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials", "_get_stale_trial_ids")
EARLY = {"type": "hyperband", "min_iter": 1, "eta": 3}  # bands at 1, 3, 9 epochs: hyperband runs every poll


# ---- the probe: one runner, instrumented ---------------------------------------------------------


def probe(out: str, argv: list[str]) -> int:
    """Run `python -m sweeps <argv>` with timers around ask, the lock and the storage calls."""
    import optuna

    from sweeps.main import main
    from sweeps.runner.storage import Storage

    lock, calls, asks, waits, holds = threading.Lock(), {}, [], [], []

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            error = None
            try:
                return fn(*a, **k)
            except Exception as e:
                error = type(e).__name__
                raise
            finally:
                with lock:
                    row = calls.setdefault(name, {"calls": 0, "s": 0.0, "errors": {}})
                    row["calls"] += 1
                    row["s"] += time.perf_counter() - start
                    if error:
                        row["errors"][error] = row["errors"].get(error, 0) + 1
        return wrapper

    for name, fn in list(vars(optuna.storages.RDBStorage).items()):
        if callable(fn) and (not name.startswith("_") or name in PRIVATE_CALLS):
            setattr(optuna.storages.RDBStorage, name, timed(name, fn))
    ask = optuna.study.Study.ask

    def timed_ask(self, *a, **k):
        start, cpu = time.perf_counter(), time.thread_time()  # CPU: what the sampler costs, whatever the load
        trial = ask(self, *a, **k)
        asks.append([trial.number, time.perf_counter() - start, time.thread_time() - cpu])
        return trial

    optuna.study.Study.ask = timed_ask
    critical = Storage.critical

    @contextlib.contextmanager
    def timed_critical(self):
        start = time.perf_counter()
        with critical(self):
            got = time.perf_counter()
            waits.append(got - start)
            try:
                yield
            finally:
                holds.append(time.perf_counter() - got)

    Storage.critical = timed_critical
    start = time.perf_counter()
    try:
        return main(argv)
    finally:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        Path(out).write_text(json.dumps({
            "wall_s": time.perf_counter() - start, "cpu_s": me.ru_utime + me.ru_stime,
            "runs_cpu_s": kids.ru_utime + kids.ru_stime, "asks": asks, "lock_wait_s": waits, "lock_hold_s": holds,
            "storage": calls}))


# ---- the driver ----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres():
    """A throw-away PostgreSQL server; yields a function that makes a database and returns its URL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("error: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                         "(apt-get install postgresql), or run with --storages sqlite")
    pg = found[-1].parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="sweep-scale-pg-"))
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    if as_pg:
        subprocess.run(["chown", "-R", "postgres", str(folder)], check=True)
    data = folder / "data"
    subprocess.run([*as_pg, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(pg / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "pg.log"), "start", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=200"],
                   check=True, capture_output=True)

    def database(name: str) -> str:
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        subprocess.run([*as_pg, str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def measured(cmd: list[str]) -> dict:
    """Wall seconds and peak memory (MB) of one command, run alone in a fresh process."""
    wrapper = [sys.executable, "-c", "import resource, subprocess, sys, time; t = time.perf_counter(); "
               "c = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
               "print(c, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
    code, wall, rss = subprocess.run(wrapper, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if code != "0":
        raise SystemExit(f"error: {' '.join(cmd)} exited {code}")
    return {"s": round(float(wall), 2), "peak_mb": round(int(rss) / 1024, 1)}


def sampler_ms(sweep_file: Path, url: str, asks: int = 5) -> float:
    """CPU ms of one ask by the runner's sampler on an in-memory copy of the finished study: the
    sampler's own growth with the study, without storage or load."""
    import optuna
    import yaml

    from sweeps.files.sweep import Sweep
    from sweeps.runner.space import build_space, make_sampler
    from sweeps.runner.storage import driver_url

    space = build_space(Sweep.from_dict(yaml.safe_load(sweep_file.read_text())))
    copy = optuna.create_study(direction="maximize", sampler=make_sampler(space, 0))
    copy.add_trials(optuna.load_study(study_name=None, storage=driver_url(url)).get_trials())
    start = time.thread_time()
    for _ in range(asks):
        copy.tell(copy.ask(space.distributions), state=optuna.trial.TrialState.FAIL)  # failed: not seen by TPE
    return 1000 * (time.thread_time() - start) / asks


def prefill(sweep: dict, url: str, sweep_dir: Path, count: int, epochs: int) -> None:
    """`count` done trials (random configurations, toy learning curves, a third stopped after 3 epochs)
    recorded as the runner records them: an Optuna trial with the run's facts and a run.json."""
    import numpy as np
    import optuna

    from sweeps.files.io import write_json_atomic
    from sweeps.files.sweep import Sweep
    from sweeps.runner.space import build_space
    from sweeps.runner.storage import driver_url

    space, rng = build_space(Sweep.from_dict(sweep)), np.random.default_rng(0)
    filler, trials = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)), []
    for number in range(count):
        params = filler.ask(space.distributions).params
        stopped = number % 3 == 2
        curve = 0.5 + rng.uniform(0.1, 0.3) * (1 - np.exp(-np.arange(1, (3 if stopped else epochs) + 1) / 3))
        attrs = {"run_dir": f"runs/{number:04d}", "state": "stopped" if stopped else "finished", "reason": None,
                 "history": [round(float(v), 4) for v in curve], "exit_code": 0, "wall_s": 1.0,
                 "params": json.loads(json.dumps(space.values(params), default=str))}
        trials.append(optuna.trial.create_trial(params=params, distributions=space.distributions,
                                                value=max(attrs["history"]), user_attrs=attrs))
        (sweep_dir / attrs["run_dir"]).mkdir(parents=True)
        write_json_atomic(sweep_dir / attrs["run_dir"] / "run.json", dict(attrs, trial=number, value=trials[-1].value))
    study = optuna.create_study(storage=driver_url(url), study_name=sweep["name"], direction="maximize")
    study.add_trials(trials)


def sweep_once(n: int, runners: int, url: str | None, work: Path, epochs: int, minute_s: float,
               live: int) -> dict:
    from benchmarks.lcbench.sweep_files import lcbench_sweep
    from sweeps.files import render_yaml

    sweep_dir, probes = work / "sweep", work / "probes"
    probes.mkdir(parents=True)
    sweep_file = work / "sweep.yaml"
    sweep = lcbench_sweep("bayes", EARLY, surrogate="toy", minute_s=minute_s, max_epochs=epochs)
    sweep_file.write_text(render_yaml(sweep))
    done = max(0, n - live)
    if done:
        prefill(sweep, url or f"sqlite:///{sweep_dir / 'optuna.db'}", sweep_dir, done, epochs)
    args = ["run", str(sweep_file), "--count", str(n), "--workers", "1", "--out", str(sweep_dir), "--wandb",
            "disabled", "--quiet", "--seed", "0", *(["--storage", url] if url else [])]
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--probe", str(probes / f"{i}.json"), "--", *args],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(runners)]
    outputs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        bad = next(o for p, o in zip(procs, outputs) if p.returncode)
        raise SystemExit(f"error: a runner failed:\n{bad[-3000:]}")
    runs = [json.loads(p.read_text()) for p in sorted((sweep_dir / "runs").glob("*/run.json"))][done:]  # live ones
    rows = [json.loads(p.read_text()) for p in sorted(probes.glob("*.json"))]
    storage: dict = {}
    for row in rows:
        for name, c in row["storage"].items():
            total = storage.setdefault(name, {"calls": 0, "s": 0.0, "errors": {}})
            total["calls"] += c["calls"]
            total["s"] += c["s"]
            for e, k in c["errors"].items():
                total["errors"][e] = total["errors"].get(e, 0) + k
    asks = sorted(a for row in rows for a in row["asks"])
    states = {s: sum(r["state"] == s for r in runs) for s in {r["state"] for r in runs}}
    program = sum(r["wall_s"] for r in runs)
    result = {
        "trials": n, "prefilled": done, "runners": runners, "runs": len(runs), "states": states, "wall_s": round(wall, 2),
        "program_wall_s_per_trial": program / max(1, len(runs)),
        # a slot's time per trial beyond the run's own wall time: start-up, ask, storage, polling, locks
        "slot_overhead_s_per_trial": (runners * wall - program) / max(1, len(runs)),
        "runner_cpu_s_per_trial": sum(r["cpu_s"] for r in rows) / max(1, len(runs)),
        "program_cpu_s_per_trial": sum(r["runs_cpu_s"] for r in rows) / max(1, len(runs)),
        "asks": asks, "lock_wait_s": sum(w for r in rows for w in r["lock_wait_s"]),
        "lock_wait_max_s": max((w for r in rows for w in r["lock_wait_s"]), default=0.0),
        "lock_hold_s": sum(h for r in rows for h in r["lock_hold_s"]), "storage": storage,
        "storage_calls_per_trial": sum(c["calls"] for c in storage.values()) / max(1, len(runs)),
        "storage_s_per_trial": sum(c["s"] for c in storage.values()) / max(1, len(runs)),
        "storage_errors": errors(storage),
        "sampler_cpu_ms": sampler_ms(sweep_file, url or f"sqlite:///{sweep_dir / 'optuna.db'}"),
        "best": measured([sys.executable, "-m", "sweeps", "best", str(sweep_dir)]),
        "report": measured([sys.executable, "-m", "sweeps", "report", str(sweep_dir)]),
    }
    result["report"]["html_mb"] = round((sweep_dir / "report.html").stat().st_size / 2**20, 2)
    return result


def errors(storage: dict) -> int:
    """Exceptions from storage calls, but create_study's DuplicatedStudyError: every runner but the
    first meets it in create_study(load_if_exists=True), Optuna's way of joining a study."""
    return sum(k for c in storage.values() for e, k in c["errors"].items() if e != "DuplicatedStudyError")


def ask_ms(asks: list, last: int, column: int = 1) -> float:
    """Mean ms (column 1: wall, 2: the asking thread's CPU) of the asks of the last ten trial
    numbers below `last`, the study's size then. TPE's first 10 trials are random (n_startup_trials)."""
    times = [a[column] for a in asks if last - 10 <= a[0] < last and len(a) > column]
    return 1000 * sum(times) / max(1, len(times))


FIGURES = [  # (label, how to read it from one result)
    ("wall s", lambda r: r["wall_s"]),
    ("run's own wall s/trial", lambda r: r["program_wall_s_per_trial"]),
    ("slot overhead s/trial", lambda r: r["slot_overhead_s_per_trial"]),
    ("runner CPU s/trial", lambda r: r["runner_cpu_s_per_trial"]),
    ("ask ms (last 10 trials)", lambda r: ask_ms(r["asks"], r["trials"])),
    ("ask CPU ms (last 10)", lambda r: ask_ms(r["asks"], r["trials"], 2)),
    ("sampler alone CPU ms", lambda r: r.get("sampler_cpu_ms", float("nan"))),
    ("storage calls/trial", lambda r: r["storage_calls_per_trial"]),
    ("storage s/trial", lambda r: r["storage_s_per_trial"]),
    ("lock held, % of wall", lambda r: 100 * r["lock_hold_s"] / r["wall_s"]),
    ("lock wait s (all)", lambda r: r["lock_wait_s"]),
    ("lock wait max s", lambda r: r["lock_wait_max_s"]),
    ("storage errors", lambda r: errors(r["storage"])),
    ("best s", lambda r: r["best"]["s"]),
    ("best peak MB", lambda r: r["best"]["peak_mb"]),
    ("report s", lambda r: r["report"]["s"]),
    ("report peak MB", lambda r: r["report"]["peak_mb"]),
    ("report.html MB", lambda r: r["report"]["html_mb"]),
]


def print_table(results: dict) -> None:
    for backend, by_size in results.items():
        sizes = sorted(by_size, key=int)
        print(f"\n{backend}: {by_size[sizes[0]]['runners']} runners; ratios: each size over the previous")
        print(f"{'':<26}" + "".join(f"{s:>10}" for s in sizes) + "".join(f"{f'x{a}->{b}':>12}"
                                                                        for a, b in zip(sizes, sizes[1:])))
        for label, get in FIGURES:
            values = [get(by_size[s]) for s in sizes]
            ratios = [f"{b / a:>12.2f}" if a else f"{'-':>12}" for a, b in zip(values, values[1:])]
            print(f"{label:<26}" + "".join(f"{v:>10.3g}" for v in values) + "".join(ratios))
        print("states of the runs run: " + "; ".join(f"{s}: {by_size[s]['states']}" for s in sizes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--runners", type=int, default=16)
    p.add_argument("--storages", default="sqlite,postgresql")
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--minute-s", type=float, default=0.002, help="wall seconds per simulated minute")
    p.add_argument("--live", type=int, default=0, help="run only the last LIVE trials of each size, the others "
                   "written into the storage first as done trials (0: run them all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "sweep_scale.json"))
    p.add_argument("--work", help="keep the sweeps here (default: a temporary directory)")
    p.add_argument("--table", action="store_true", help="only print the figures already in --out")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    results: dict = json.loads(out.read_text()) if out.is_file() else {}  # one storage at a time adds to it
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.table:
        print_table(results)
        return 0
    with contextlib.ExitStack() as stack:
        work = Path(args.work or stack.enter_context(tempfile.TemporaryDirectory(prefix="sweep-scale-")))
        for backend in args.storages.split(","):
            database = stack.enter_context(postgres()) if backend == "postgresql" else None
            for n in sizes:
                url = database(f"scale{n}") if database else None
                print(f"{backend}: {n} trials ...", flush=True)
                results.setdefault(backend, {})[str(n)] = sweep_once(n, args.runners, url, work / f"{backend}{n}",
                                                                     args.epochs, args.minute_s, args.live or n)
                out.write_text(json.dumps(results, indent=1))  # what is done survives a later failure
    print_table(results)
    print(f"\nraw figures: {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        sys.exit(probe(sys.argv[2], sys.argv[sys.argv.index("--") + 1:]))
    sys.exit(main())
