"""The sweep phase of benchmarks/gpu.py: the headline run, K to a GPU, through the offline runner.

K runs of configs/ra_hand.yaml (resnet34, 384 px, batch 16, 4 loader workers, bf16-mixed) on
synthetic phantoms from one shared cache start together with `python -m sweeps run --gpus 0
--trials-per-gpu K`, for K = 1, 4, 8 (each while the phase's time allows; 8 is near the 10 runs
of the headline plan). Each run trains 12,000 images per epoch for 2 epochs (a validation of 15%
and a checkpoint per epoch): 10-25 s of GPU time at 1,000-2,400 images/s against a run's ~10 s
of start-up, and the figures below come from each run's steady state and from the window in
which all K runs train, not from the wall. Per K: each run's steady-state
images/s (throughput.RunTimer, written to <run dir>/timing.json), their sum while the runs
overlap, start-up seconds, the GPU's busy fraction (nvidia-smi `utilization.gpu` sampled every
250 ms: the share of time a kernel was running) over the whole wall and over the window in
which all K runs train, and memory: the GPU's peak used MiB and each run's own peak reserved.
These are the figures the headline estimate of benchmarks/README.md rests on.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

# What the runs change in configs/ra_hand.yaml; the model, size, batch and workers stay its own.
GPU = {"unique": 200, "raw": 384, "train_images": 12000, "epochs": 2, "ks": (1, 4, 8), "overrides": {}}
TINY = {"unique": 16, "raw": 48, "train_images": 16, "epochs": 2, "ks": (1, 2),
        "overrides": {"model.backbone": "resnet18", "data.image_size": 32, "data.batch_size": 4,
                      "data.num_workers": 0}}

# benchmarks/README.md, "Headline estimate": GPU work of the headline sweep per image of the cohort,
# in training-image equivalents: 40 trials x 5 folds x 30 epochs x 0.59 (hyperband's share of
# epochs, sweep_efficiency.py) x (0.68 trained + 0.17 validated at ~1/3 the cost).
HEADLINE_WORK_PER_IMAGE = 40 * 5 * 30 * 0.59 * (0.68 + 0.17 / 3)
HEADLINE_COHORT, HEADLINE_SIDE_BY_SIDE, HEADLINE_FOLDS = 3000, 10, 200


class GpuSampler:
    """`nvidia-smi -lms 250` in the background: (time, utilization %, used MiB) of one GPU.
    No CUDA context in this process; without nvidia-smi (CPU) it samples nothing."""

    def __init__(self, gpu: str) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self._cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                     "-i", gpu, "-lms", "250"]
        self._proc: Optional[subprocess.Popen] = None

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                util, used = (float(v) for v in line.split(","))
            except ValueError:  # "[N/A]" (MIG) or a partial line: no sample
                continue
            self.samples.append((time.time(), util, used))

    def __enter__(self) -> GpuSampler:
        try:
            self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=5)

    def busy(self, t0: float, t1: float) -> Optional[float]:
        """Mean utilisation in [t0, t1] as a fraction (None: no samples there)."""
        window = [u for t, u, _ in self.samples if t0 <= t <= t1]
        return statistics.mean(window) / 100 if window else None

    def used_mib(self) -> tuple[Optional[float], Optional[float]]:
        """(used before the runs started, peak used)."""
        if not self.samples:
            return None, None
        return self.samples[0][2], max(s[2] for s in self.samples)


def _dataset(work: Path, spec: dict) -> tuple[Path, str]:
    import throughput

    from datamodules.synthetic import generate

    data = work / f"phantoms-{spec['raw']}-{spec['unique']}"
    generate(data, body_part="hand", count=spec["unique"], size=(spec["raw"], spec["raw"]), seed=0)
    batch = spec["overrides"].get("data.batch_size", 16)
    return data, throughput.replicated_manifest(data, throughput.train_records(batch, spec["train_images"] // batch))


def one_k(k: int, tiny: bool, work: Path, spec: dict, data: Path, manifest: str) -> dict:
    """K runs of the headline configuration side by side on one GPU; their figures."""
    from sweeps.files.build import create_custom_sweep_config, render_yaml

    constants = {
        "data.root": str(data), "data.manifest": manifest, "data.cache_dir": str(work / "cache"),
        "trainer.max_epochs": spec["epochs"], "trainer.benchmark": True, "run.test_after_fit": False,
        "run.wandb": "disabled", "trainer.enable_progress_bar": False, "trainer.callbacks": "throughput.RunTimer",
        **spec["overrides"],
    }
    sweep = create_custom_sweep_config(
        method="grid", name=f"bench-k{k}", config="configs/ra_hand.yaml",
        parameters={"model.lr": {"values": [round(3e-4 * (i + 1), 6) for i in range(k)]},
                    **{key: {"value": value} for key, value in constants.items()}})
    sweep_file, out = work / f"bench-k{k}.yaml", work / f"sweep-k{k}"
    sweep_file.write_text(render_yaml(sweep))
    shutil.rmtree(out, ignore_errors=True)
    where = ["--workers", str(k)] if tiny else ["--gpus", "0", "--trials-per-gpu", str(k)]
    cmd = [sys.executable, "-m", "sweeps", "run", str(sweep_file), "--out", str(out), "--quiet", "--wandb",
           "disabled", *where]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    path = os.pathsep.join(p for p in (str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="" if tiny else visible, PYTHONPATH=path)
    start = time.time()
    with GpuSampler(visible.split(",")[0] or "0") as gpu:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"sweep with {k} run(s) per GPU failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    runs = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/timing.json"))]
    if len(runs) != k:
        raise RuntimeError(f"{k} run(s) per GPU: {len(runs)} timing.json file(s) under {out / 'runs'}")
    overlap = (max(r["first_step"] for r in runs), min(r["teardown"] for r in runs))
    idle, peak = gpu.used_mib()
    rates = [r["images_per_s"] for r in runs]
    figures = {
        "runs": k, "wall_s": end - start, "runs_per_hour": k * 3600 / (end - start),
        "images_per_s": sum(rates), "images": sum(r["images"] for r in runs), "run_images_per_s": rates,
        "startup_s": statistics.mean(r["first_step"] - r["process_start"] for r in runs),
        "overlap_s": overlap[1] - overlap[0],
        "gpu_busy_fraction": gpu.busy(start, end), "gpu_busy_fraction_overlap": gpu.busy(*overlap),
        "gpu_used_before_mib": idle, "gpu_peak_used_mib": peak,
        "gpu_mib_per_run": (peak - idle) / k if peak is not None else None,
        "run_cuda_max_reserved_mib": max((r.get("cuda_max_reserved_mib", 0.0) for r in runs), default=None),
        "cudnn_benchmark": True,
    }
    shutil.rmtree(out, ignore_errors=True)  # ~0.5 GB of checkpoints per run
    return figures


def phase_sweep(tiny: bool, work: Path, left: Callable[[], float], record: Callable[[str, object], None]) -> None:
    spec = TINY if tiny else GPU
    data, manifest = _dataset(work, spec)
    record("config", {"config": "configs/ra_hand.yaml", **spec["overrides"], "epochs": spec["epochs"],
                      "train_images_per_epoch": spec["train_images"]})
    last, first, best = None, None, None
    for k in spec["ks"]:
        # K runs take at most K/J times as long as J runs did (a GPU already full): skip what cannot finish.
        if last is not None and left() < 1.1 * last["wall_s"] * k / last["runs"]:
            record(f"k{k}", {"skipped": f"{left():.0f} s of the phase left; K={last['runs']} took {last['wall_s']:.0f} s"})
            continue
        figures = one_k(k, tiny, work, spec, data, manifest)
        first = first or figures
        figures["speedup_vs_k1"] = figures["images_per_s"] / first["images_per_s"]  # steady-state, all runs
        figures["runs_per_hour_vs_k1"] = figures["runs_per_hour"] / first["runs_per_hour"]  # wall, start-up too
        record(f"k{k}", figures)
        last = figures
        best = figures if best is None or figures["images_per_s"] > best["images_per_s"] else best
        record("headline_estimate", headline(best))


def headline(figures: dict) -> dict:
    """The README's headline estimate with the measured aggregate rate (best K so far) and start-up."""
    gpu_s = HEADLINE_WORK_PER_IMAGE * HEADLINE_COHORT / figures["images_per_s"]
    start_s = HEADLINE_FOLDS * figures["startup_s"] / HEADLINE_SIDE_BY_SIDE
    return {"cohort_images": HEADLINE_COHORT, "from_k": figures["runs"], "aggregate_images_per_s": figures["images_per_s"],
            "gpu_min": gpu_s / 60, "startup_min": start_s / 60, "minutes": (gpu_s + start_s) / 60}
