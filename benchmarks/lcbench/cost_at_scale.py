"""What a sweep's bookkeeping costs as it grows (issue 22 item 4, partly): the sampler's `ask` on a
SQLite study of 10 / 100 / 1000 finished trials, and the runner's overhead per trial.

    nice -n 10 python benchmarks/lcbench/cost_at_scale.py

`ask` is timed as the runner calls it: the LCBench sweep's space and the project's per-trial
seeded sampler (random; multivariate TPE for bayes), on a study in an SQLite file. The runner
overhead: real `python -m sweeps run` sweeps of the surrogate program with no sleeping
(`lcbench.minute_s: 0`, 3 epochs) of n and 2n trials; the difference over n is the cost of one
trial (process start, Optuna bookkeeping, polling), the runner's own start-up cancelled. Not measured here: PostgreSQL, 16 runners, `best` and `report` at 1,000 trials.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from benchmarks.lcbench.sweep_files import lcbench_sweep  # noqa: E402
from sweeps.files import render_yaml  # noqa: E402
from sweeps.files.sweep import Sweep  # noqa: E402
from sweeps.runner.space import build_space, make_sampler  # noqa: E402


def ask_ms(method: str, n: int, work: Path, asks: int = 5) -> float:
    """Mean ms of one ask once the study holds n finished trials."""
    space = build_space(Sweep.from_dict(lcbench_sweep(method, surrogate="toy")))
    url = f"sqlite:///{work / f'{method}_{n}.db'}"
    study = optuna.create_study(storage=url, direction="maximize", sampler=make_sampler(space, 0))
    rng = np.random.default_rng(0)
    filler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(n):  # random history, added in one go: what is timed is the next ask
        t = filler.ask(space.distributions)
        filler.tell(t, float(rng.uniform(0.5, 0.95)))
    study.add_trials(filler.get_trials())
    spent = 0.0
    for _ in range(asks):
        start = time.perf_counter()
        trial = study.ask(space.distributions)
        spent += time.perf_counter() - start
        study.tell(trial, float(rng.uniform(0.5, 0.95)))
    return 1000 * spent / asks


def sweep_seconds(count: int, work: Path) -> float:
    """Wall seconds of a real sweep of `count` runs that do no work."""
    sweep = lcbench_sweep("random", surrogate="toy", minute_s=0.0, max_epochs=3)
    path = work / "sweep.yaml"
    path.write_text(render_yaml(sweep))
    cmd = [sys.executable, "-m", "sweeps", "run", str(path), "--count", str(count), "--workers", "1",
           "--out", str(work / f"out{count}"), "--wandb", "disabled", "--quiet"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def runner_overhead(count: int, work: Path) -> tuple[float, float]:
    """Seconds per trial (the difference between sweeps of 2*count and count runs: the runner's
    own start-up cancels) and the start-up that remains."""
    one, two = sweep_seconds(count, work), sweep_seconds(2 * count, work)
    per_trial = (two - one) / count
    return per_trial, one - count * per_trial


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--runs", type=int, default=10, help="trials of the runner-overhead sweep")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"{'trials':>6} {'random ask ms':>13} {'bayes (TPE) ask ms':>18}")
        for n in map(int, args.sizes.split(",")):
            print(f"{n:>6} {ask_ms('random', n, work):>13.1f} {ask_ms('bayes', n, work):>18.1f}", flush=True)
        per_trial, startup = runner_overhead(args.runs, work)
        print(f"runner: {per_trial:.2f} s per trial, {startup:.1f} s start-up (sweeps of {args.runs} and "
              f"{2 * args.runs} trials that do no work, one worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
