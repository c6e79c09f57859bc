"""Training throughput in one run on one machine: the ceiling, the project's own path, the loader.

    python benchmarks/throughput.py                      # CPU: small settings, ~2 minutes on 2 cores
    python benchmarks/throughput.py --device cuda        # GPU: resnet50, 224 px, batch 256, compiled

(a) plain PyTorch loop, same backbone / size / batch / precision (the one `cli.py fit` picks
    here, rundir.slots.default_precision) and channels_last on GPU, data already on the device: eager and torch.compile'd. The ceiling.
(b) `cli.py fit` in-process (cli_main) fed from the preprocessing cache, timed by a callback
    over steady-state steps only (after --warmup steps, inside epochs).
(c) the loader alone: from raw 16-bit PNG (decode + resize in the workers) and from the cache,
    images/s per worker; and the memory of 1 vs N workers reading the cache (it is mapped from
    the page cache, so the sum over workers should not grow by a copy of the array per worker).

Targets (issue): (b) compiled >= 0.95 x (a) compiled on GPU; cache >= 20 x raw per worker.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from first_step import FirstStep  # noqa: E402  (benchmarks/first_step.py)
from lightning.pytorch.callbacks import Callback  # noqa: E402

from rundir.slots import default_precision  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(Callback):
    """Images/s over steady-state training steps: skips `warmup` steps (compile, cudnn autotune,
    worker start) and, in every epoch, its first batch (the clock starts at its end) and the gap
    to the next epoch (checkpointing, loader restart). An epoch of one batch therefore counts
    nothing: size the data with `train_records` so that every epoch has several full batches."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup, self.images, self.steps, self.seconds, self._t0 = warmup, 0, 0, 0.0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.warmup:
            return
        if self._t0 is None:
            _sync(pl_module.device.type)
            self._t0 = time.perf_counter()
            return
        self.images, self.steps = self.images + len(batch[1]), self.steps + 1

    def _close(self, pl_module) -> None:
        if self._t0 is not None:
            _sync(pl_module.device.type)
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close(pl_module)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    def figures(self) -> dict:
        return {"images_per_s": self.images_per_s, "images": self.images, "steps": self.steps,
                "seconds": self.seconds}


class RunTimer(StepTimer, FirstStep):
    """StepTimer for runs that the sweep runner starts (`trainer.callbacks: throughput.RunTimer`,
    with benchmarks/ on PYTHONPATH): its figures and the GPU memory the run reserved go into
    FirstStep's <run dir>/timing.json."""

    def __init__(self, warmup: int = 5) -> None:
        StepTimer.__init__(self, warmup)
        FirstStep.__init__(self)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.times.update(self.figures())
        if pl_module.device.type == "cuda":  # this process trains on the GPU: its context exists
            self.times["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
            self.times["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        FirstStep.teardown(self, trainer, pl_module, stage)


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    """Set `torch.backends.cudnn.benchmark` for one measurement and restore it after: Lightning's
    Trainer sets the global flag from `benchmark=` and never resets it
    (lightning/pytorch/trainer/connectors/accelerator_connector.py, `_set_torch_flags`), so
    without this one `cli_fit` would change the setting of every later measurement."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def train_records(batch_size: int, batches_per_epoch: int, train_share: float = 0.7) -> int:
    """Records a data set needs so that its training split (`train_share` of it, 70% with the
    default 15/15 validation/test split) holds `batches_per_epoch` full batches."""
    return math.ceil(batches_per_epoch * batch_size / train_share) + batch_size  # patient-level split jitter


def replicated_manifest(data: Path, records: int) -> str:
    """A manifest (file name, relative to `data`) that lists data/manifest.csv's images again and
    again, each copy as a patient of its own, until it has `records` rows. Throughput needs many
    images per epoch, not many distinct ones: the cache decodes each file once."""
    if not (data / "manifest.csv").is_file():
        raise SystemExit(f"error: {data / 'manifest.csv'} not found: --data needs a manifest (path,label[,patient_id])")
    with (data / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    copies = math.ceil(records / len(rows))
    name = f"manifest-x{copies}.csv"
    if not (data / name).is_file():
        tmp = data / f".{name}.tmp-{os.getpid()}"
        with tmp.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=[*(k for k in rows[0] if k != "patient_id"), "patient_id"])
            out.writeheader()
            for copy in range(copies):
                out.writerows({**row, "patient_id": f"{row.get('patient_id') or row['path']}-{copy}"} for row in rows)
        tmp.replace(data / name)
    return name


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cuda_peak(device: str) -> float:
    if device != "cuda":
        return float("nan")
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return peak


def plain_loop(args, device: str, compiled: bool) -> dict:
    """The ceiling: a hand-written training step on a fixed batch already on the device."""
    with cudnn_benchmark(args.cudnn_benchmark):
        return _plain_loop(args, device, compiled)


def _plain_loop(args, device: str, compiled: bool) -> dict:
    from models.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone(args.backbone, num_classes=2, in_chans=1).to(device)
    fmt = torch.channels_last if device == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(args.batch_size, 1, args.image_size, args.image_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 2, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if compiled else model
    # The precision `cli.py fit` picks on this machine, so that (a) and (b) compare like with like:
    # not is_bf16_supported(), which says yes on a V100/T4 that only emulates bf16 (the CLI
    # trains those at 16-mixed, with a GradScaler as here: lightning/pytorch/plugins/precision/amp.py).
    precision = default_precision(device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=dtype is torch.float16)

    def step() -> None:
        with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(step_model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds, images = time.perf_counter() - t, args.steps * args.batch_size
    return {"images_per_s": images / seconds, "images": images, "steps": args.steps, "seconds": seconds,
            "warmup_s": warm_s, "cuda_peak_mib": _cuda_peak(device), "precision": precision,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def _datamodule(args, *, cache: bool, workers: int, image_size: int, manifest: Optional[str] = None):
    from datamodules.datamodule import XrayDataModule

    return XrayDataModule(root=str(args.data), manifest=manifest, image_size=image_size,
                          batch_size=args.batch_size, num_workers=workers,
                          cache_dir=str(args.work / "cache") if cache else None)


def _worker_memory() -> dict:
    import psutil

    uss = pss = 0
    for child in psutil.Process().children(recursive=True):
        info = child.memory_full_info()
        uss, pss = uss + info.uss, pss + info.pss
    return {"workers_uss_mib": uss / 2**20, "workers_pss_mib": pss / 2**20}


def loader_rate(args, *, cache: bool, workers: int, batches: int, image_size: int,
                manifest: Optional[str] = None) -> dict:
    """Images/s the training loader alone delivers, after one warm-up batch; cycles epochs."""
    data = _datamodule(args, cache=cache, workers=workers, image_size=image_size, manifest=manifest)
    t = time.perf_counter()
    data.setup("fit")
    setup_s = time.perf_counter() - t
    loader = data.train_dataloader()
    images, seconds, done = 0, 0.0, 0
    iterator = iter(loader)
    next(iterator)
    t = time.perf_counter()
    while done < batches:
        for x, _, _ in iterator:
            images, done = images + len(x), done + 1
            if done >= batches:
                break
        else:
            iterator = iter(loader)
    seconds = time.perf_counter() - t
    out = {"images_per_s": images / seconds, "images": images, "seconds": seconds, "setup_s": setup_s,
           "batches": done}
    if workers and cache:
        for _ in iterator:  # finish the epoch: together the workers have now touched every row
            pass
        out.update(_worker_memory())
        out["array_mib"] = data.cache.images.nbytes / 2**20
    if hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    return out


def cli_fit(args, device: str, compiled: bool) -> dict:
    """The project's own path: `cli.py fit` in-process, fed from the cache, timed by StepTimer.
    The data set is args.data's images listed again and again, so that every epoch has
    `args.batches_per_epoch` full batches (StepTimer counts none of an epoch of one batch)."""
    from cli import cli_main

    manifest = replicated_manifest(args.data, train_records(args.batch_size, args.batches_per_epoch))
    timer = {"class_path": "benchmarks.throughput.StepTimer", "init_args": {"warmup": args.warmup}}
    # StepTimer skips each epoch's first batch: enough steps that `args.steps` of them are timed.
    steps = args.warmup + math.ceil(args.steps * args.batches_per_epoch / (args.batches_per_epoch - 1)) + 1
    argv = [
        "fit", "--config", str(ROOT / "configs/demo.yaml"), f"--data.manifest={manifest}",
        f"--data.root={args.data}", "--demo.body_part=null", f"--data.cache_dir={args.work / 'cache'}",
        f"--data.image_size={args.image_size}", f"--data.batch_size={args.batch_size}",
        f"--data.num_workers={args.workers}",
        f"--model.backbone={args.backbone}", f"--model.channels_last={device == 'cuda'}",
        f"--model.compile={compiled}",
        f"--trainer.accelerator={device}", "--trainer.devices=1", f"--trainer.benchmark={args.cudnn_benchmark}",
        f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1",
        "--trainer.check_val_every_n_epoch=100000", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
        f"--trainer.callbacks=[{json.dumps(timer)}]",
        "--run.wandb=disabled", "--run.test_after_fit=false", f"--run.root={args.work / 'runs'}",
    ]
    t = time.perf_counter()
    with cudnn_benchmark(args.cudnn_benchmark):  # the same setting as plain_loop, restored after
        cli = cli_main(argv)
    total_s = time.perf_counter() - t
    step_timer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "StepTimer")
    return {**step_timer.figures(), "total_s": total_s, "cuda_peak_mib": _cuda_peak(device),
            "precision": str(cli.trainer.precision), "cudnn_benchmark": args.cudnn_benchmark}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backbone", help="default resnet18 on CPU, resnet50 on GPU")
    p.add_argument("--image-size", type=int, help="default 64 on CPU, 224 on GPU")
    p.add_argument("--batch-size", type=int, help="default 16 on CPU, 256 on GPU")
    p.add_argument("--steps", type=int, help="timed steps (default 8 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 2 on CPU, 15 on GPU)")
    p.add_argument("--workers", type=int, help="loader workers (default 2 on CPU, min(8, cores) on GPU)")
    p.add_argument("--loader-batches", type=int, help="batches timed per loader (default 4 on CPU, 8 on GPU)")
    p.add_argument("--data", type=Path, help="data set folder (default: generate synthetic 16-bit PNGs)")
    p.add_argument("--count", type=int, help="images to generate (default 64 on CPU, 256 on GPU)")
    p.add_argument("--raw-size", type=int, nargs=2, metavar=("H", "W"), help="default 1024 1024, 1024 1024 GPU")
    p.add_argument("--memory-size", type=int, default=512, help="image size of the cache the memory check reads")
    p.add_argument("--work", type=Path, default=Path("/tmp/xray-throughput"), help="data, cache and runs")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile (default: on GPU only; on CPU it needs a C++ compiler)")
    p.add_argument("--skip", nargs="*", default=[], choices=["plain", "cli", "loader"], help="phases to leave out")
    p.add_argument("--batches-per-epoch", type=int, default=4,
                   help="full batches in each epoch of (b) (the images are listed again as needed; >= 2)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=None,
                   help="cudnn.benchmark for (a) and (b) alike (default: on with CUDA; fixed input sizes)")
    args = p.parse_args(argv)
    if args.batches_per_epoch < 2:
        p.error(f"--batches-per-epoch {args.batches_per_epoch}: StepTimer needs >= 2 batches per epoch")
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    args.device = "cuda" if cuda else "cpu"
    gpu = {"backbone": "resnet50", "image_size": 224, "batch_size": 256, "steps": 50, "warmup": 15,
           "workers": min(8, os.cpu_count() or 1), "loader_batches": 8, "count": 256, "raw_size": [1024, 1024],
           "compile": True}
    cpu = {"backbone": "resnet18", "image_size": 64, "batch_size": 16, "steps": 8, "warmup": 2, "workers": 2,
           "loader_batches": 4, "count": 64, "raw_size": [1024, 1024], "compile": False}
    for key, value in (gpu if cuda else cpu).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.cudnn_benchmark is None:
        args.cudnn_benchmark = cuda
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    if args.data is None:
        from datamodules.synthetic import generate

        h, w = args.raw_size
        args.data = args.work / f"png16-{h}x{w}-{args.count}"
        t = time.perf_counter()
        generate(args.data, body_part="hand", count=args.count, size=(h, w), fmt="png16", seed=0)
        print(f"data: {args.data} ({args.count} png16 images {h}x{w}; {time.perf_counter() - t:.1f} s)")
    print(f"device={device} backbone={args.backbone} image_size={args.image_size} batch={args.batch_size} "
          f"steps={args.steps} warmup={args.warmup} workers={args.workers} cores={os.cpu_count()} "
          f"cudnn.benchmark={args.cudnn_benchmark} (plain loop and cli.py fit alike) torch={torch.__version__}")
    rows: list[tuple[str, dict]] = []
    results: dict[str, dict] = {}

    def record(name: str, result: dict) -> None:
        result["peak_rss_mib"] = peak_rss_mib()
        results[name] = result
        rows.append((name, result))
        print(f"  {name:<34} {result['images_per_s']:>10.1f} images/s   "
              + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                          if k != "images_per_s"), flush=True)

    compiles = [False, True] if args.compile else [False]
    if not args.compile:
        print("  (torch.compile not timed: pass --compile; default on GPU only)")
    if "plain" not in args.skip:
        for compiled in compiles:
            record(f"(a) plain loop {'compiled' if compiled else 'eager'}", plain_loop(args, device, compiled))
    if "loader" not in args.skip:
        w, n, size = args.workers, args.loader_batches, args.image_size
        record(f"(c) loader raw png16, {w} workers", loader_rate(args, cache=False, workers=w, batches=n,
                                                                  image_size=size))
        # The cache is fast: time more batches so that the figure is not noise.
        record(f"(c) loader cache, {w} workers", loader_rate(args, cache=True, workers=w, batches=10 * n,
                                                              image_size=size))
        if w > 1:  # memory of 1 vs N workers reading a cache large enough to see a copy if there were one
            for workers in (1, w):
                record(f"(c) memory {args.memory_size} px cache, {workers} worker(s)",
                       loader_rate(args, cache=True, workers=workers, batches=1, image_size=args.memory_size))
    if "cli" not in args.skip:
        for compiled in compiles:
            record(f"(b) cli.py fit from cache {'compiled' if compiled else 'eager'}", cli_fit(args, device, compiled))

    print("\nsummary")
    for mode in ("eager", "compiled"):
        a, b = results.get(f"(a) plain loop {mode}"), results.get(f"(b) cli.py fit from cache {mode}")
        if a and b:
            print(f"  (b)/(a) {mode}: {b['images_per_s'] / a['images_per_s']:.3f}   (target >= 0.95 compiled, GPU)")
        if a and mode == "compiled":
            eager = results["(a) plain loop eager"]
            print(f"  compile time (plain loop warm-up, compiled - eager): {a['warmup_s'] - eager['warmup_s']:.1f} s")
    w = max(1, args.workers)
    raw, cached = results.get(f"(c) loader raw png16, {args.workers} workers"), results.get(
        f"(c) loader cache, {args.workers} workers")
    if raw and cached:
        print(f"  loader per worker: raw {raw['images_per_s'] / w:.1f}, cache {cached['images_per_s'] / w:.1f} "
              f"images/s; cache/raw {cached['images_per_s'] / raw['images_per_s']:.1f}x   (target >= 20x)")
        print(f"  cache build (first setup): {cached['setup_s']:.1f} s for {args.count} images")
    one = results.get(f"(c) memory {args.memory_size} px cache, 1 worker(s)")
    many = results.get(f"(c) memory {args.memory_size} px cache, {args.workers} worker(s)")
    if one and many:
        growth = many["workers_uss_mib"] - one["workers_uss_mib"]
        print(f"  workers' memory after one epoch over the {args.memory_size} px cache (array {one['array_mib']:.1f} "
              f"MiB), summed USS / PSS: 1 worker {one['workers_uss_mib']:.1f} / {one['workers_pss_mib']:.1f} MiB, "
              f"{args.workers} workers {many['workers_uss_mib']:.1f} / {many['workers_pss_mib']:.1f} MiB; "
              f"growth {growth:.1f} MiB = {growth / one['array_mib']:.2f} x array per extra "
              f"{args.workers - 1} worker(s) (a copy per worker would be >= 1)")
    print(f"  peak RSS of this process: {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
