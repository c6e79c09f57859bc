"""How fast does a sweep find a good model? Anytime regret on LCBench (benchmarks/README.md, "LCBench").

    nice -n 10 python benchmarks/sweep_efficiency_lcbench.py                  # 10 instances x 5 seeds x K 1, 8
    python benchmarks/sweep_efficiency_lcbench.py --instances 2 --seeds 1 --budget 5 --grid ""   # seconds

Simulated in-process, not by launching processes (thousands of runs): a discrete-event loop
stands in for the runner's slots and clock, and every decision is the project's own code or
Optuna's, exactly as the runner calls it: the sweep file from the project's generator
(benchmarks/lcbench/sweep_files.py), its Optuna space and per-trial-seeded sampler
(sweeps.runner.space.build_space / make_sampler: random, or multivariate TPE for bayes),
W&B's stopping rule (sweeps.hyperband.hyperband_stop on every run's history after each epoch,
as the runner applies it after each poll), a finished or stopped run told with the best value of
its history (as the runner tells it). Optuna's pruners (SuccessiveHalvingPruner ~ ASHA without
promotion, HyperbandPruner) see `trial.report(value, epochs trained)` + `should_prune()`.
Learning curves and epoch times come from YAHPO Gym's LCBench surrogate.

Regret: best validation balanced accuracy known for the instance (2,000 random configurations x
52 epochs, and every value any method saw) minus the sweep's best so far. Compute: the sum of the
simulated epoch times of every epoch trained; wall: the simulated clock with K workers.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from benchmarks.lcbench import surrogate  # noqa: E402
from benchmarks.lcbench.sweep_files import lcbench_sweep  # noqa: E402
from sweeps.contract.history import best_of  # noqa: E402
from sweeps.files.sweep import Sweep  # noqa: E402
from sweeps.hyperband import hyperband_bands, hyperband_stop  # noqa: E402
from sweeps.runner.space import build_space, make_sampler  # noqa: E402

E = surrogate.MAX_EPOCHS
VAL, TEST, TIME = 3, 5, 0  # columns of surrogate.Y_NAMES
PRESET = {"type": "hyperband", "min_iter": 3, "eta": 3}  # sweeps/files/presets.py before this benchmark


def methods(wandb_rule: dict) -> dict[str, tuple[str, object]]:
    """name -> (sampler method, stopper): None, an early_terminate dict, or a key of PRUNERS."""
    return {
        "random": ("random", None),
        "random+wandb": ("random", wandb_rule),
        "bayes+wandb": ("bayes", wandb_rule),
        "random+asha": ("random", "asha"),
        "random+hyperband": ("random", "hyperband"),
        "bayes+asha": ("bayes", "asha"),
    }


PRUNERS = {  # Optuna's, as an offline scheduler could offer them (reduction factor 3, from 1 epoch)
    "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=E, reduction_factor=3),
}


def random_configs(n: int, seed: int) -> list[dict]:
    """LCBench's space sampled uniformly (log where it is log): the reference set of an instance."""
    rng = np.random.default_rng(seed)

    def log_u(lo, hi):
        return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))

    return [{"batch_size": round(log_u(16, 512)), "learning_rate": log_u(1e-4, 1e-1),
             "momentum": rng.uniform(0.1, 0.99), "weight_decay": rng.uniform(1e-5, 1e-1),
             "num_layers": int(rng.integers(1, 6)), "max_units": round(log_u(64, 1024)),
             "max_dropout": rng.uniform(0, 1)} for _ in range(n)]


def reference(task: str, n: int) -> dict:
    """Best validation value of n random configurations at any epoch; median time of a full run."""
    c = surrogate.curves(task, random_configs(n, seed=12345), E)
    return {"best_val": float(c[:, :, VAL].max()), "full_run_s": float(np.median(c[:, -1, TIME]))}


def epoch_times(curve: np.ndarray) -> np.ndarray:
    """Per-epoch seconds from the surrogate's cumulative time (made monotone: it is a prediction)."""
    t = np.maximum.accumulate(np.maximum(curve[:, TIME], 0.0))
    return np.maximum(np.diff(t, prepend=0.0), 0.01)


def simulate(task: str, method: tuple, seed: int, workers: int, budget: float) -> dict:
    """One sweep until `budget` simulated seconds of training; the incumbent after every epoch."""
    kind, stopper = method
    sweep = lcbench_sweep(kind, stopper if isinstance(stopper, dict) else None, task=task)
    space = build_space(Sweep.from_dict(sweep))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = PRUNERS[stopper]() if isinstance(stopper, str) else optuna.pruners.NopPruner()
    bands = set(hyperband_bands(stopper)[:10]) if isinstance(stopper, dict) else set()
    if isinstance(stopper, dict) and stopper.get("strict") is False:
        bands = set(range(1, E + 1))  # judged on the best value so far: any epoch may change a decision
    study = optuna.create_study(direction="maximize", sampler=make_sampler(space, seed), pruner=pruner)
    histories: dict[int, list] = {}
    running: dict[int, dict] = {}
    events: list = []  # (clock, trial number, epoch index)
    log = {"compute": [], "wall": [], "val": [], "test": []}
    best, compute, trials, asks_s = -math.inf, 0.0, 0, 0.0

    def start(now: float) -> None:
        nonlocal trials, asks_s
        t0 = time.perf_counter()
        trial = study.ask(space.distributions)
        asks_s += time.perf_counter() - t0
        config = surrogate.lcbench_config(space.values(trial.params))
        curve = surrogate.curves(task, [config], E)[0]
        dt = epoch_times(curve)
        running[trial.number] = {"trial": trial, "curve": curve, "dt": dt}
        histories[trial.number] = []
        heapq.heappush(events, (now + dt[0], trial.number, 0))
        trials += 1

    def end(number: int) -> None:
        job = running.pop(number)
        study.tell(job["trial"], best_of(histories[number], "maximize"))

    for _ in range(workers):
        start(0.0)
    while events and compute < budget:
        now, number, epoch = heapq.heappop(events)
        if number not in running:
            continue
        job = running[number]
        compute += float(job["dt"][epoch])
        value = float(job["curve"][epoch, VAL])
        histories[number].append(value)
        if value > best:
            best = value
            for key, v in zip(log, (compute, now, value, float(job["curve"][epoch, TEST]))):
                log[key].append(v)
        stopped = []
        if isinstance(stopper, dict) and epoch + 1 in bands:
            # With strict (the default) W&B's decisions change only when a run reaches a band: a new
            # value there moves that band's threshold. Calling the rule then only is the same as every poll.
            live = [n for n in running if len(histories[n]) < E]
            stopped = [d.run for d in hyperband_stop(histories, live, stopper, "maximize")]
        elif isinstance(stopper, str):
            job["trial"].report(value, epoch + 1)
            if job["trial"].should_prune():
                stopped = [number]
        if epoch + 1 < E and number not in stopped:
            heapq.heappush(events, (now + job["dt"][epoch + 1], number, epoch + 1))
        for n in [*stopped, *([number] if epoch + 1 == E else [])]:
            if n in running:
                end(n)
                start(now)
    return {**log, "trials": trials, "ask_s": asks_s, "compute_end": compute}


def regret_at(run: dict, axis: str, points: np.ndarray, best_known: float) -> np.ndarray:
    """Regret of the incumbent at each point of `axis` (inf before the first epoch ends)."""
    xs, vals = np.asarray(run[axis]), np.asarray(run["val"])
    idx = np.searchsorted(xs, points, side="right") - 1
    return np.where(idx >= 0, best_known - vals[np.maximum(idx, 0)], np.inf)


def first_reaching(run: dict, axis: str, target: float, best_known: float) -> float:
    hits = [x for x, v in zip(run[axis], run["val"]) if best_known - v <= target + 1e-12]
    return hits[0] if hits else math.inf


def _one(job: tuple) -> dict:
    key, method, task, seed, k, budget = job
    run = simulate(task, method, seed, k, budget)
    return {"key": key, "task": task, "seed": seed, "budget": budget, **run}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=10, help="LCBench instances (every third of the 34)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", default="1,8", help="K values, comma-separated")
    p.add_argument("--budget", type=float, default=30, help="budget in median full runs (52 epochs) of the instance")
    p.add_argument("--reference", type=int, default=1000, help="random configurations for the best known value")
    p.add_argument("--methods", default="", help="comma-separated subset (default all)")
    p.add_argument("--grid", default="1:3,2:3,3:3,5:3,2:2,3:4",
                   help="W&B rule settings min_iter:eta also measured with random search, K=1 ('' for none)")
    p.add_argument("--grid-seeds", type=int, default=2, help="seeds of the grid settings")
    p.add_argument("--jobs", type=int, default=1, help="processes")
    p.add_argument("--raw", type=Path, default=Path("/tmp/lcbench_efficiency_runs.jsonl"),
                   help="one line per simulated sweep, appended as they end; a rerun skips those already there")
    p.add_argument("--report-only", action="store_true", help="summarize --raw as it is, simulate nothing")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "lcbench_efficiency.json")
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "lcbench_efficiency.png")
    args = p.parse_args(argv)
    tasks = surrogate.instances()[::3][: args.instances]
    ks = [int(k) for k in args.workers.split(",")]
    chosen = methods(PRESET)
    if args.methods:
        chosen = {k: v for k, v in chosen.items() if k in args.methods.split(",")}
    grid = {f"random+wandb({g})": ("random", {"type": "hyperband", "min_iter": int(g.split(":")[0]),
                                              "eta": int(g.split(":")[1])}) for g in args.grid.split(",") if g}
    started = time.perf_counter()
    refs = {t: reference(t, args.reference) for t in tasks}
    done = set()
    if args.raw.is_file():
        done = {(r["key"], r["task"], r["seed"]) for r in map(json.loads, args.raw.read_text().splitlines())}
    # Seeds outermost: stopped early, the file still holds every method on the same seeds.
    jobs = [(f"{name}|{k}", m, t, seed, k, args.budget * refs[t]["full_run_s"])
            for seed in range(args.seeds) for t in tasks
            for name, m, k in [*((n, m, k) for n, m in chosen.items() for k in ks),
                               *((n, m, 1) for n, m in grid.items() if seed < args.grid_seeds)]
            if (f"{name}|{k}", t, seed) not in done and not args.report_only]
    print(f"{len(jobs)} sweeps to simulate ({len(done)} already in {args.raw})", file=sys.stderr, flush=True)
    with args.raw.open("a") as raw:
        if args.jobs > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(args.jobs)
            results = pool.imap_unordered(_one, jobs)
        else:
            results = map(_one, jobs)
        for i, result in enumerate(results, 1):
            raw.write(json.dumps(result, separators=(",", ":")) + "\n")
            raw.flush()
            if i % 20 == 0:
                print(f"  {i}/{len(jobs)} sweeps, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return report(args, refs, ks, tasks, started)


def report(args: argparse.Namespace, refs: dict, ks: list[int], tasks: list[str], started: float) -> int:
    raw = [r for r in map(json.loads, args.raw.read_text().splitlines()) if r["task"] in refs and r["seed"] < args.seeds]
    # Side by side means on the same (instance, seed) pairs: those every method of that kind has.
    main_keys = {r["key"] for r in raw if "(" not in r["key"]}
    pairs = {}
    for r in raw:
        pairs.setdefault("(" in r["key"], {}).setdefault((r["task"], r["seed"]), set()).add(r["key"])
    grid_keys = {r["key"] for r in raw if "(" in r["key"]}
    complete = {(grid, pair) for grid, by_pair in pairs.items() for pair, keys in by_pair.items()
                if keys == (grid_keys if grid else main_keys)}
    runs: dict = {}
    for r in raw:
        refs[r["task"]]["best_val"] = max(refs[r["task"]]["best_val"], max(r["val"], default=-math.inf))
        if ("(" in r["key"], (r["task"], r["seed"])) in complete:
            runs.setdefault(r["key"], []).append((r["task"], r["seed"], r["budget"], r))
    summary = summarize(runs, refs, ks)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": {**settings, "tasks": tasks, "preset": PRESET}, "reference": refs,
                                    "summary": summary}, separators=(",", ":")))
    print_table(summary)
    plot(summary, args.plot, ks)
    print(f"wrote {args.out} and {args.plot} ({time.perf_counter() - started:.0f} s)")
    return 0


FRACTIONS = np.geomspace(0.005, 1.0, 60)


def summarize(runs: dict, refs: dict, ks: list[int]) -> dict:
    """Per method and K, over instances x seeds: regret at 10% and 100% of the budget, the
    fraction of the budget needed to reach random search's final regret (median; inf when never),
    the same against the wall clock, the incumbent's test value, trials and sampler time."""
    out = {}
    for key, items in runs.items():
        name, k = key.split("|")
        base = {(t, s): r for t, s, _, r in runs.get(f"random|{k}", runs.get("random|1", []))}
        row = {"curve": [], "wall_curve": [], "to_random": [], "wall_to_random": [], "at10": [], "at100": [],
               "test": [], "trials": [], "ask_ms": []}
        for task, seed, budget, run in items:
            known = refs[task]["best_val"]
            row["curve"].append(regret_at(run, "compute", FRACTIONS * budget, known))
            row["wall_curve"].append(regret_at(run, "wall", FRACTIONS * budget / int(k), known))
            row["at10"].append(regret_at(run, "compute", np.array([0.1 * budget]), known)[0])
            row["at100"].append(known - run["val"][-1])
            row["test"].append(run["test"][-1])
            row["trials"].append(run["trials"])
            row["ask_ms"].append(1000 * run["ask_s"] / max(run["trials"], 1))
            if (task, seed) in base:
                target = known - base[(task, seed)]["val"][-1]
                row["to_random"].append(first_reaching(run, "compute", target, known) / budget)
                ref_wall = first_reaching(base[(task, seed)], "wall", target, known)
                row["wall_to_random"].append(first_reaching(run, "wall", target, known) / ref_wall)
        out[key] = {
            "method": name, "workers": int(k), "n": len(items),
            "regret_at_10pct": float(np.mean(row["at10"])), "regret_final": float(np.mean(row["at100"])),
            "compute_to_random_final_median": float(np.median(row["to_random"])) if row["to_random"] else None,
            "reached_random_final": float(np.mean(np.isfinite(row["to_random"]))) if row["to_random"] else None,
            "wall_to_random_final_median": float(np.median(row["wall_to_random"])) if row["wall_to_random"] else None,
            "test_of_incumbent": float(np.mean(row["test"])), "trials_mean": float(np.mean(row["trials"])),
            "ask_ms_mean": float(np.mean(row["ask_ms"])),
            "regret_curve_mean": np.mean(np.minimum(row["curve"], 1.0), axis=0).round(5).tolist(),
            "regret_wall_curve_mean": np.mean(np.minimum(row["wall_curve"], 1.0), axis=0).round(5).tolist(),
        }
    return out


def print_table(summary: dict) -> None:
    print(f"\n{'method':<22} {'K':>2} {'n':>3} {'regret@10%':>10} {'regret@100%':>11} {'compute->rnd':>12} "
          f"{'reached':>7} {'wall->rnd':>9} {'test':>6} {'trials':>6} {'ask ms':>6}")
    for s in summary.values():
        def f(x):
            return "never" if x is None or not math.isfinite(x) else f"{x:.2f}"
        print(f"{s['method']:<22} {s['workers']:>2} {s['n']:>3} {s['regret_at_10pct']:>10.4f} {s['regret_final']:>11.4f} "
              f"{f(s['compute_to_random_final_median']):>12} {f(s['reached_random_final']):>7} "
              f"{f(s['wall_to_random_final_median']):>9} {s['test_of_incumbent']:>6.4f} {s['trials_mean']:>6.0f} "
              f"{s['ask_ms_mean']:>6.1f}")


def plot(summary: dict, path: Path, ks: list[int]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install '.[bench]'): no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, len(ks) + 1, figsize=(5 * (len(ks) + 1), 4), sharey=True)
    for s in summary.values():
        if "(" in s["method"]:
            continue
        i = ks.index(s["workers"])
        axes[i].plot(FRACTIONS, s["regret_curve_mean"], label=s["method"])
        if s["workers"] == max(ks):
            axes[-1].plot(FRACTIONS, s["regret_wall_curve_mean"], label=s["method"])
    for ax, title in zip(axes, [*(f"K={k}: compute" for k in ks), f"K={max(ks)}: wall clock"]):
        ax.set(xscale="log", yscale="log", title=title, xlabel="fraction of the budget" if "compute" in title
               else "wall time / (budget / K)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean regret (validation balanced accuracy)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=70)


if __name__ == "__main__":
    sys.exit(main())
