"""What hyperband early termination saves: the same small sweep with and without it.

    python benchmarks/sweep_efficiency.py                  # demo data, 8 runs x 4 epochs, 2 CPU cores ~5 min
    python benchmarks/sweep_efficiency.py --count 16 --max-epochs 8

Both sweeps are random search with the same seed and count on configs/demo.yaml (so they try
the same configurations), run by the offline runner (`python -m sweeps run`); they share one
preprocessing cache, so the images are decoded once for all runs of both. Printed for each:
runs by state, total epochs trained (sum of the runs' history lengths) and the best metric.
Target (issue): hyperband trains >= 40% fewer epochs with a best metric within one point.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sweeps.analysis.results import load_offline_runs  # noqa: E402
from sweeps.contract.history import best_of  # noqa: E402
from sweeps.files import create_custom_sweep_config, render_yaml  # noqa: E402


def make_sweep(args: argparse.Namespace, name: str, hyperband: bool) -> dict:
    parameters = {
        "model.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 3e-2},
        "model.weight_decay": {"distribution": "log_uniform_values", "min": 1e-6, "max": 1e-2},
        "trainer.max_epochs": {"value": args.max_epochs},
        "data.image_size": {"value": args.image_size},
        "data.cache_dir": {"value": str(args.work / "cache")},
        "run.wandb": {"value": "disabled"},
    }
    if args.limit_train_batches:
        parameters["trainer.limit_train_batches"] = {"value": args.limit_train_batches}
        parameters["trainer.limit_val_batches"] = {"value": args.limit_train_batches}
    early = {"type": "hyperband", "min_iter": 1, "eta": 2} if hyperband else None
    return create_custom_sweep_config(method="random", name=name, parameters=parameters, early_terminate=early,
                                      config=args.config, metric_name=args.metric)


def run_sweep(args: argparse.Namespace, name: str, hyperband: bool) -> dict:
    sweep = make_sweep(args, name, hyperband)
    sweep_file = args.work / f"{name}.yaml"
    sweep_file.write_text(render_yaml(sweep))
    out = args.work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sweeps", "run", str(sweep_file), "--count", str(args.count), "--seed",
           str(args.seed), "--out", str(out), "--wandb", "disabled", "--quiet", "--workers", str(args.workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    sweep, runs = load_offline_runs(out)
    goal = sweep.goal
    bests = [b for b in (best_of(r["history"], goal) for r in runs) if b is not None]
    best = (max if goal == "maximize" else min)(bests) if bests else float("nan")
    return {"name": name, "runs": len(runs), "states": dict(Counter(r["state"] for r in runs)),
            "epochs": sum(len(r["history"]) for r in runs), "best": best, "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml", help="LightningCLI config the sweep trains")
    p.add_argument("--metric", default="val/auroc")
    p.add_argument("--count", type=int, default=8, help="runs per sweep")
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit-train-batches", type=int, help="batches per epoch (train and val); default all")
    p.add_argument("--seed", type=int, default=0, help="sampler seed, the same for both sweeps")
    p.add_argument("--workers", type=int, default=1, help="parallel runs")
    p.add_argument("--work", type=Path, default=Path("/tmp/xray-sweep-efficiency"))
    args = p.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    results = [run_sweep(args, "full", hyperband=False), run_sweep(args, "hyperband", hyperband=True)]
    print(f"\n{args.count} runs x up to {args.max_epochs} epochs of {args.config}, {args.metric}, seed {args.seed}")
    print(f"  {'sweep':<10} {'runs':>4} {'epochs':>7} {'best':>8} {'time s':>7}  states")
    for r in results:
        print(f"  {r['name']:<10} {r['runs']:>4} {r['epochs']:>7} {r['best']:>8.4f} {r['seconds']:>7.0f}  {r['states']}")
    full, hb = results
    saved = 1 - hb["epochs"] / full["epochs"] if full["epochs"] else float("nan")
    print(f"  hyperband: {saved:.0%} fewer epochs (target >= 40%), best metric {hb['best'] - full['best']:+.4f} "
          f"(target within 0.01)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
