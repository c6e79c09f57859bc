"""What the offline runner costs per run: launch to first training step, and the gap between
runs, against the same runs started directly with `python cli.py fit` (the baseline), both
measured in this one run on this machine.

    python benchmarks/runner_overhead.py               # 3 runs each, tiny demo data, 2 CPU cores ~2 min
    python benchmarks/runner_overhead.py --runs 5

Also prints the total wall time of the runner's sweep and of the direct runs. The demo
sweep's own wall time (`make demo`) is printed by make; this script isolates the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sweeps.files import create_custom_sweep_config, render_yaml  # noqa: E402

CONSTANTS = {
    "demo.body_part": "null",  # the data set is generated once below: every run trains on it as it is
    "data.image_size": 32,
    "data.num_workers": 0,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "trainer.enable_progress_bar": False,
    "run.test_after_fit": False,
    "run.wandb": "disabled",
    "trainer.callbacks": "first_step.FirstStep",
}


def timings(run_dirs: list[Path]) -> list[dict]:
    return [json.loads((d / "timing.json").read_text()) for d in run_dirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xray-runner-overhead"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    constants = dict(CONSTANTS, **{"data.root": str(args.work / "data")})
    lrs = [round(1e-3 * (i + 1), 6) for i in range(args.runs)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "benchmarks"), CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""))

    # Baseline: the same runs, started directly one after the other.
    subprocess.run([sys.executable, "-m", "datamodules.synthetic", "--out", str(args.work / "data"), "--body-part",
                    "hand", "--count", "60", "--size", "64", "64", "--seed", "42"], cwd=ROOT, check=True, env=env,
                   capture_output=True)
    direct_dirs, t0 = [], time.time()
    for i, lr in enumerate(lrs):
        run_dir = args.work / "direct" / f"{i:04d}"
        argv = [sys.executable, "cli.py", "fit", "--config", "configs/demo.yaml", f"--model.lr={lr}",
                *[f"--{k}={v}" for k, v in constants.items()]]
        subprocess.run(argv, cwd=ROOT, env=dict(env, XRAY_RUN_DIR=str(run_dir)), check=True, capture_output=True)
        direct_dirs.append(run_dir)
    direct_wall = time.time() - t0

    # The runner: a grid over the same learning rates, everything else constant.
    sweep = create_custom_sweep_config(method="grid", name="overhead", config="configs/demo.yaml",
                                       parameters={"model.lr": {"values": lrs},
                                                   **{k: {"value": v} for k, v in constants.items()}})
    sweep_file = args.work / "overhead.yaml"
    sweep_file.write_text(render_yaml(sweep))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "sweeps", "run", str(sweep_file), "--out", str(args.work / "sweep"),
                    "--quiet", "--wandb", "disabled"], cwd=ROOT, env=env, check=True, capture_output=True)
    runner_wall = time.time() - t0
    runner_dirs = sorted((args.work / "sweep" / "runs").iterdir())

    def report(name: str, rows: list[dict], wall: float) -> tuple[float, float]:
        start = statistics.mean(r["first_step"] - r["process_start"] for r in rows)
        gaps = [b["process_start"] - a["teardown"] for a, b in zip(rows, rows[1:])]
        gap = statistics.mean(gaps) if gaps else float("nan")
        print(f"{name:8s} launch->first step {start:6.2f} s   gap between runs {gap:5.2f} s   total {wall:6.1f} s")
        return start, gap

    print(f"{args.runs} runs each, tiny demo settings, {os.cpu_count()} CPU cores")
    d_start, d_gap = report("direct", timings(direct_dirs), direct_wall)
    r_start, r_gap = report("runner", timings(runner_dirs), runner_wall)
    print(f"ratio runner/direct: launch->first step {r_start / d_start:.2f}x, total {runner_wall / direct_wall:.2f}x;"
          f" runner overhead per run {(runner_wall - direct_wall) / args.runs:+.2f} s")


if __name__ == "__main__":
    main()
