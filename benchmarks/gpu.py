"""Every GPU figure benchmarks/README.md promises, on one GPU, in one run, into one JSON file.

    make bench-gpu                                     # python benchmarks/gpu.py --out benchmarks/gpu.json
    python benchmarks/gpu.py --tiny --out /tmp/g.json  # CPU, tiniest settings: checks the script only

Phases, in this order (each timed; --skip leaves some out; a phase that would start after
--budget-s seconds is skipped and recorded so, which keeps the whole under 8 minutes):

  throughput  resnet50 at 224 px (batch 256) and densenet121 at 512 px (batch 64), bf16 autocast,
              channels_last: (a) the plain PyTorch loop, eager and torch.compile'd (the ceiling);
              (b) `cli.py fit` from the preprocessing cache, eager and compiled. The functions of
              benchmarks/throughput.py, one set of settings after the other.
  loader      the training loader alone at 512 px: raw 16-bit PNGs (2560x2048, decoded and
              resized in the workers) vs the cache, images/s per worker.
  sweep       the same 4-run grid (resnet18, 128 px, demo data from a shared cache) through
              `python -m sweeps run --gpus 0 --trials-per-gpu K` for K = 1, 2, 4: wall time and
              runs per hour, and the GPU's peak memory use (nvidia-smi).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import throughput  # noqa: E402  (benchmarks/throughput.py: the loop, cli fit and loader measurements)
import torch  # noqa: E402

MODELS = {"gpu": [("resnet50", 224, 256), ("densenet121", 512, 64)], "tiny": [("resnet18", 32, 4)]}
SWEEP_K = {"gpu": (1, 2, 4), "tiny": (1, 2)}


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"none (CPU: {platform.processor()})"


def settings(tiny: bool, work: Path, backbone: str, size: int, batch: int, data: Path) -> argparse.Namespace:
    """benchmarks/throughput.py's own settings object for one model."""
    if tiny:
        argv = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--workers", "1", "--loader-batches", "2"]
    else:
        argv = ["--device", "cuda", "--steps", "40", "--warmup", "10", "--loader-batches", "8"]
    args = throughput.parse_args([*argv, "--backbone", backbone, "--image-size", str(size), "--batch-size",
                                  str(batch), "--work", str(work), "--data", str(data)])
    return args


def synthetic(work: Path, size: tuple[int, int], count: int) -> Path:
    from datamodules.synthetic import generate

    data = work / f"png16-{size[0]}x{size[1]}-{count}"
    if not (data / "manifest.csv").is_file():
        generate(data, body_part="hand", count=count, size=size, fmt="png16", seed=0)
    return data


def phase_throughput(tiny: bool, work: Path) -> dict:
    device = "cpu" if tiny else "cuda"
    data = synthetic(work, (64, 64) if tiny else (1024, 1024), 24 if tiny else 256)
    out = {}
    for backbone, size, batch in MODELS["tiny" if tiny else "gpu"]:
        args = settings(tiny, work, backbone, size, batch, data)
        rows: dict = {"image_size": size, "batch_size": batch}
        for compiled in (False,) if tiny else (False, True):
            mode = "compiled" if compiled else "eager"
            rows[f"plain_{mode}"] = throughput.plain_loop(args, device, compiled)
            rows[f"cli_fit_{mode}"] = throughput.cli_fit(args, device, compiled)
            rows[f"ratio_{mode}"] = rows[f"cli_fit_{mode}"]["images_per_s"] / rows[f"plain_{mode}"]["images_per_s"]
        out[backbone] = rows
    return out


def phase_loader(tiny: bool, work: Path) -> dict:
    data = synthetic(work, (64, 64) if tiny else (2560, 2048), 24 if tiny else 96)
    args = settings(tiny, work, "resnet18", 32 if tiny else 512, 4 if tiny else 64, data)
    raw = throughput.loader_rate(args, cache=False, workers=args.workers, batches=args.loader_batches,
                                 image_size=args.image_size)
    cache = throughput.loader_rate(args, cache=True, workers=args.workers, batches=10 * args.loader_batches,
                                   image_size=args.image_size)
    return {"raw_size": [64, 64] if tiny else [2560, 2048], "workers": args.workers, "raw": raw, "cache": cache,
            "cache_over_raw": cache["images_per_s"] / raw["images_per_s"]}


class PeakGpuMemory:
    """The GPU's peak used memory (MiB) while a command runs, sampled with nvidia-smi."""

    def __init__(self) -> None:
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=10).stdout
                self.peak = max(self.peak, float(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self) -> PeakGpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def phase_sweep(tiny: bool, work: Path) -> dict:
    from sweeps.files.build import create_custom_sweep_config, render_yaml

    runs = 1 if tiny else 4  # tiny: one run per setting, only to exercise the path
    data = work / "demo"
    if not (data / "manifest.csv").is_file():  # made once, before runs that start together
        from datamodules.synthetic import generate

        generate(data, body_part="hand", count=48 if tiny else 400, size=(64, 64) if tiny else (256, 256), seed=0)
    constants = {
        "data.root": str(data), "demo.body_part": "null", "data.cache_dir": str(work / "cache"),
        "data.image_size": 32 if tiny else 128, "data.batch_size": 8 if tiny else 64,
        "data.num_workers": 0 if tiny else 4, "model.backbone": "resnet18",
        "trainer.max_epochs": 1 if tiny else 3, "run.test_after_fit": False, "run.wandb": "disabled",
        "trainer.enable_progress_bar": False,
    }
    if tiny:
        constants.update({"trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1})
    out: dict = {"runs": runs, "model": "resnet18", "image_size": constants["data.image_size"]}
    for k in SWEEP_K["tiny" if tiny else "gpu"]:
        sweep = create_custom_sweep_config(
            method="grid", name=f"bench-k{k}", config="configs/demo.yaml",
            parameters={"model.lr": {"values": [round(1e-3 * (i + 1), 6) for i in range(runs)]},
                        **{key: {"value": value} for key, value in constants.items()}})
        sweep_file = work / f"bench-k{k}.yaml"
        sweep_file.write_text(render_yaml(sweep))
        where = ["--workers", str(k)] if tiny else ["--gpus", "0", "--trials-per-gpu", str(k)]
        cmd = [sys.executable, "-m", "sweeps", "run", str(sweep_file), "--out", str(work / f"sweep-k{k}"),
               "--quiet", "--wandb", "disabled", *where]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if tiny else os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
        start = time.perf_counter()
        with PeakGpuMemory() as memory:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"sweep with {k} trial(s) per GPU failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        out[f"k{k}"] = {"wall_s": wall, "runs_per_hour": runs * 3600 / wall,
                        "gpu_peak_used_mib": memory.peak if not tiny else None}
    base = out[f"k{SWEEP_K['tiny' if tiny else 'gpu'][0]}"]["wall_s"]
    for k in SWEEP_K["tiny" if tiny else "gpu"]:
        out[f"k{k}"]["speedup_vs_k1"] = base / out[f"k{k}"]["wall_s"]
    return out


PHASES = {"throughput": phase_throughput, "loader": phase_loader, "sweep": phase_sweep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu.json", help="the JSON file written")
    p.add_argument("--work", type=Path, default=Path("/tmp/xray-bench-gpu"), help="data, caches, runs")
    p.add_argument("--tiny", action="store_true", help="CPU, tiniest settings: checks that the script works")
    p.add_argument("--skip", nargs="*", default=[], choices=list(PHASES))
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="no phase starts after this many seconds (default 450: the whole stays under 8 min)")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA GPU; `--tiny` checks the script on CPU", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"date": time.strftime("%Y-%m-%d"), "gpu": gpu_name(), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "tiny": args.tiny, "phases": {}, "phase_s": {}}
    start = time.perf_counter()
    for name, phase in PHASES.items():
        if name in args.skip:
            continue
        if time.perf_counter() - start > args.budget_s:
            result["phases"][name] = {"skipped": f"time budget of {args.budget_s:g} s spent"}
            continue
        t = time.perf_counter()
        print(f"{name} ...", flush=True)
        result["phases"][name] = phase(args.tiny, args.work)
        result["phase_s"][name] = time.perf_counter() - t
        print(f"{name}: {result['phase_s'][name]:.0f} s", flush=True)
    result["total_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out} ({result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
