"""Every GPU figure benchmarks/README.md promises, on one GPU, in one run, into one JSON file.

    make bench-gpu                                     # python benchmarks/gpu.py --out benchmarks/gpu.json
    python benchmarks/gpu.py --tiny --out /tmp/g.json  # CPU, tiniest settings: checks the script only

Each phase runs in a child process of its own, with its own share of --budget-s (a hard timeout;
inside, a measurement that would not fit is skipped and says so). The child writes its figures
after every measurement and this process writes the JSON after every phase, so a phase that
fails, hangs or is killed loses only its unfinished measurement; its error goes into the file.
This process never touches CUDA (the GPU's name comes from nvidia-smi).

  throughput  resnet50 at 224 px (batch 256) and densenet121 at 512 px (batch 64), bf16 autocast,
              channels_last: (a) the plain PyTorch loop and (b) `cli.py fit` from the preprocessing
              cache (every epoch several full batches), eager first, then torch.compile'd;
              cudnn.benchmark on for both sides (recorded per line).
  loader      the training loader alone at 512 px: raw 16-bit PNGs (2560x2048, decoded and
              resized in the workers) vs the cache, images/s per worker.
  sweep       benchmarks/gpu_sweep.py: the headline run (configs/ra_hand.yaml: resnet34, 384 px,
              batch 16) K to a GPU through `python -m sweeps run --trials-per-gpu K`.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import gpu_sweep  # noqa: E402  (benchmarks/gpu_sweep.py)
import throughput  # noqa: E402  (benchmarks/throughput.py: the loop, cli fit and loader measurements)

# (backbone, image size, batch, raw image size): the cache is built from the raw images, so they
# only need to be at least as large as the image size.
MODELS = {"gpu": [("resnet50", 224, 256, 256), ("densenet121", 512, 64, 512)], "tiny": [("resnet18", 32, 8, 48)]}
# Share of --budget-s per phase (hard timeout of its child process).
SHARES = {"throughput": 0.36, "loader": 0.12, "sweep": 0.52}
Record = Callable[[str, object], None]
# Imported by the phases (cli.py, the runner) and often missing where only torch is installed.
NEEDED = ("lightning", "torchmetrics", "torchvision", "jsonargparse", "wandb", "optuna", "pydicom", "plotly")


def nvidia_smi(*query: str) -> list[str]:
    """One line per GPU of `nvidia-smi --query-gpu=...` ([] without nvidia-smi): no CUDA context."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.strip().splitlines() if out.returncode == 0 else []


def synthetic(work: Path, size: tuple[int, int], count: int) -> Path:
    from datamodules.synthetic import generate

    data = work / f"png16-{size[0]}x{size[1]}-{count}"
    generate(data, body_part="hand", count=count, size=size, fmt="png16", seed=0)  # kept if it exists
    return data


def settings(tiny: bool, work: Path, backbone: str, size: int, batch: int, data: Path) -> argparse.Namespace:
    """benchmarks/throughput.py's own settings object for one model."""
    if tiny:
        argv = ["--device", "cpu", "--steps", "3", "--warmup", "1", "--workers", "1", "--loader-batches", "2",
                "--batches-per-epoch", "3"]
    else:
        argv = ["--device", "cuda", "--steps", "30", "--warmup", "10", "--loader-batches", "4",
                "--batches-per-epoch", "4", "--cudnn-benchmark"]
    return throughput.parse_args([*argv, "--backbone", backbone, "--image-size", str(size), "--batch-size",
                                  str(batch), "--work", str(work), "--data", str(data)])


def phase_throughput(tiny: bool, work: Path, left: Callable[[], float], record: Record) -> None:
    out: dict = {}
    models = MODELS["tiny" if tiny else "gpu"]
    data = {raw: synthetic(work, (raw, raw), 16 if tiny else 64) for _, _, _, raw in models}
    for compiled in (False,) if tiny else (False, True):  # every eager figure first, then compiled
        mode = "compiled" if compiled else "eager"
        for backbone, size, batch, raw in models:
            args = settings(tiny, work, backbone, size, batch, data[raw])
            rows = out.setdefault(backbone, {"image_size": size, "batch_size": batch})
            need = 60 if compiled else 20  # seconds a pair of measurements needs at least (compile ~30 s each)
            if left() < need:
                rows[f"plain_{mode}"] = rows[f"cli_fit_{mode}"] = {"skipped": f"{left():.0f} s of the phase left"}
                record("models", out)
                continue
            rows[f"plain_{mode}"] = throughput.plain_loop(args, args.device, compiled)
            record("models", out)
            rows[f"cli_fit_{mode}"] = throughput.cli_fit(args, args.device, compiled)
            rows[f"ratio_{mode}"] = rows[f"cli_fit_{mode}"]["images_per_s"] / rows[f"plain_{mode}"]["images_per_s"]
            record("models", out)


def phase_loader(tiny: bool, work: Path, left: Callable[[], float], record: Record) -> None:
    raw_size = (64, 64) if tiny else (2560, 2048)
    data = synthetic(work, raw_size, 8 if tiny else 16)
    args = settings(tiny, work, "resnet18", 32 if tiny else 512, 4 if tiny else 64, data)
    manifest = throughput.replicated_manifest(data, throughput.train_records(args.batch_size, args.loader_batches))
    record("raw_size", list(raw_size))
    record("workers", args.workers)
    kwargs = {"workers": args.workers, "image_size": args.image_size, "manifest": manifest}
    raw = throughput.loader_rate(args, cache=False, batches=args.loader_batches, **kwargs)
    record("raw", raw)
    cache = throughput.loader_rate(args, cache=True, batches=10 * args.loader_batches, **kwargs)
    record("cache", cache)
    record("cache_over_raw", cache["images_per_s"] / raw["images_per_s"])


PHASES = {"throughput": phase_throughput, "loader": phase_loader, "sweep": gpu_sweep.phase_sweep}


def run_phase(name: str, tiny: bool, work: Path, budget_s: float, part: Path) -> None:
    """In the child: run one phase, writing its figures into `part` after every measurement."""
    figures: dict = {}
    deadline = time.monotonic() + budget_s

    def record(key: str, value: object) -> None:
        figures[key] = value
        tmp = part.with_suffix(".tmp")
        tmp.write_text(json.dumps(figures, indent=1, default=str))
        tmp.replace(part)

    PHASES[name](tiny, work, lambda: deadline - time.monotonic(), record)


def timed_rows(tree: object, where: str = "") -> list[tuple[str, dict]]:
    """Every measurement in the results: the dicts that report images/s, by their path."""
    if not isinstance(tree, dict):
        return []
    rows = [(where, tree)] if "images_per_s" in tree else []
    for key, value in tree.items():
        rows += timed_rows(value, f"{where}/{key}")
    return rows


def summary(name: str, figures: dict) -> None:
    for where, row in timed_rows(figures, name):
        extra = {k: row[k] for k in ("cudnn_benchmark", "gpu_busy_fraction_overlap", "gpu_mib_per_run") if k in row}
        print(f"  {where:<44} {row['images_per_s']:>9.1f} images/s  ({row['images']} images timed)  "
              + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()))
    for key, value in figures.items():
        if key == "error" or (isinstance(value, dict) and "skipped" in value):
            print(f"  {name}/{key}: {value if key != 'error' else value.splitlines()[0]}")


def run_child(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run a phase's child in its own process group, echoing its output; kill the group at the
    timeout (SIGTERM, then SIGKILL: runs the sweep runner started end with it). Returns the exit
    code (None: timed out) and the last lines of output."""
    tail: collections.deque[str] = collections.deque(maxlen=30)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def echo() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip())
            print(f"  | {line}", end="", flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
    reader.join(timeout=5)
    return code, "\n".join(tail)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu.json", help="the JSON file written")
    p.add_argument("--work", type=Path, default=Path("/tmp/xray-bench-gpu"), help="data, caches, runs")
    p.add_argument("--tiny", action="store_true", help="CPU, tiniest settings: checks that the script works")
    p.add_argument("--skip", nargs="*", default=[], choices=list(PHASES))
    p.add_argument("--budget-s", type=float,
                   help="seconds for all phases together, shared out as " + ", ".join(
                       f"{k} {v:.0%}" for k, v in SHARES.items()) + " (default 440: the whole under 8 min; "
                   "--tiny 1800: a check on a busy CPU, not a timing)")
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)  # the child: run this phase
    p.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # the child writes its figures here
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.tiny else 440.0
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        run_phase(args.phase, args.tiny, args.work, args.budget_s, args.part)
        return 0
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"error: {sys.executable} lacks {', '.join(missing)} (pyproject.toml's dependencies); on a machine "
              "with no network carry wheels: benchmarks/README.md, 'On a lent GPU machine'", file=sys.stderr)
        return 2
    gpus = nvidia_smi("name", "memory.total", "driver_version")
    if not args.tiny and not gpus:
        print("error: nvidia-smi finds no GPU; `--tiny` checks the script on CPU", file=sys.stderr)
        return 2
    import torch  # the version only: this process initialises no CUDA

    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": gpus[0] if gpus else f"none ({platform.processor()})",
                    "torch": torch.__version__, "cuda": torch.version.cuda, "cpus": os.cpu_count(), "tiny": args.tiny,
                    "budget_s": args.budget_s, "phases": {}, "phase_s": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.tiny:  # a check, not a timing: one thread per process (OpenMP barriers crawl on a busy CPU)
        os.environ.setdefault("OMP_NUM_THREADS", "1")

    def write() -> None:
        args.out.write_text(json.dumps(result, indent=1, default=str))

    start, failed = time.perf_counter(), []
    for name in PHASES:
        if name in args.skip:
            continue
        budget = SHARES[name] * args.budget_s
        part = args.work / f"{name}.part.json"
        part.unlink(missing_ok=True)
        print(f"{name} (budget {budget:.0f} s) ...", flush=True)
        t = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--part", str(part), "--work",
               str(args.work), "--budget-s", str(budget), *(["--tiny"] if args.tiny else [])]
        code, tail = run_child(cmd, timeout=budget)
        figures = json.loads(part.read_text()) if part.is_file() else {}
        if code != 0:
            why = f"timed out after {budget:.0f} s" if code is None else f"exit code {code}"
            figures["error"] = f"{why}; what it measured before is kept. Last output:\n{tail}"
            failed.append(name)
        result["phases"][name] = figures
        result["phase_s"][name] = time.perf_counter() - t
        result["total_s"] = time.perf_counter() - start
        write()
        print(f"{name}: {result['phase_s'][name]:.0f} s{' (FAILED: see its error in the JSON)' if code != 0 else ''}")
        summary(name, figures)
    write()
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s){'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
