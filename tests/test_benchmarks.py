"""Smoke tests of the benchmark scripts with the tiniest settings: they run and print their figures.
The targets (ratios) are for real hardware and are not asserted here."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch
from conftest import PYTHON, ROOT

sys.path.append(str(ROOT / "benchmarks"))  # benchmarks/*.py are scripts, not a package


@pytest.mark.slow
def test_throughput_benchmark_prints_every_figure(tmp_path):
    cmd = [PYTHON, "benchmarks/throughput.py", "--device", "cpu", "--backbone", "resnet18", "--image-size", "32",
           "--batch-size", "4", "--steps", "2", "--warmup", "1", "--workers", "2", "--loader-batches", "2",
           "--count", "24", "--raw-size", "64", "64", "--memory-size", "64", "--work", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for figure in ("(a) plain loop eager", "(b) cli.py fit from cache eager", "(c) loader raw png16",
                   "(c) loader cache", "(b)/(a) eager:", "cache/raw", "workers' memory", "peak RSS"):
        assert figure in out.stdout, figure
    assert "nan images/s" not in out.stdout


@pytest.mark.slow
def test_sweep_efficiency_benchmark_prints_epochs_and_best(tmp_path):
    cmd = [PYTHON, "benchmarks/sweep_efficiency.py", "--count", "2", "--max-epochs", "2", "--image-size", "32",
           "--limit-train-batches", "2", "--work", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.split()[:2] == ["full", "2"] for line in lines)
    assert any(line.split()[:2] == ["hyperband", "2"] for line in lines)
    assert "fewer epochs" in out.stdout and "best metric" in out.stdout


@pytest.mark.slow
def test_runner_overhead_benchmark_prints_both_and_the_ratio(tmp_path):
    cmd = [PYTHON, "benchmarks/runner_overhead.py", "--runs", "2", "--work", str(tmp_path / "w")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for figure in ("direct   launch->first step", "runner   launch->first step", "ratio runner/direct"):
        assert figure in out.stdout, out.stdout


@pytest.mark.slow
def test_gpu_benchmark_tiny_times_images_in_every_phase(tmp_path):
    """`make bench-gpu`'s script on CPU with the tiniest settings: every phase runs, and every timed
    measurement counted images (on the GPU, 256 images at batch 256 made each epoch one partial
    batch, which StepTimer never counts: cli_fit reported 0 images/s)."""
    import gpu

    out = tmp_path / "gpu.json"
    cmd = [PYTHON, "benchmarks/gpu.py", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and set(result["phases"]) == {"throughput", "loader", "sweep"}
    assert "error" not in json.dumps(result) and "skipped" not in json.dumps(result)
    rows = gpu.timed_rows(result["phases"])
    names = {name for name, _ in rows}
    assert {"/throughput/models/resnet18/plain_eager", "/throughput/models/resnet18/cli_fit_eager",
            "/loader/raw", "/loader/cache", "/sweep/k1", "/sweep/k2"} <= names, names
    for name, row in rows:
        assert row["images"] > 0 and math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0, (name, row)
    model = result["phases"]["throughput"]["models"]["resnet18"]
    assert model["plain_eager"]["cudnn_benchmark"] == model["cli_fit_eager"]["cudnn_benchmark"]
    assert model["cli_fit_eager"]["images"] >= 2 * model["batch_size"]  # several full batches
    assert result["phases"]["sweep"]["k2"]["runs"] == 2 and len(result["phases"]["sweep"]["k2"]["run_images_per_s"]) == 2


@pytest.mark.slow
def test_cli_fit_times_full_batches_when_the_data_set_is_smaller_than_a_batch(tmp_path):
    """The GPU phase's shape scaled down: fewer images than one batch. Epochs of one partial batch
    counted no image; the data set is now listed again until every epoch has full batches."""
    import throughput

    from datamodules.synthetic import generate

    data = tmp_path / "data"
    generate(data, body_part="hand", count=12, size=(40, 40), seed=0)  # training split ~8 images
    args = throughput.parse_args(["--device", "cpu", "--backbone", "resnet18", "--image-size", "32",
                                  "--batch-size", "16", "--steps", "3", "--warmup", "1", "--workers", "0",
                                  "--data", str(data), "--work", str(tmp_path / "work")])
    before = torch.backends.cudnn.benchmark
    row = throughput.cli_fit(args, "cpu", compiled=False)
    assert row["images"] >= args.steps * args.batch_size and row["images_per_s"] > 0, row
    assert row["cudnn_benchmark"] is False and torch.backends.cudnn.benchmark is before  # restored


def test_cudnn_benchmark_is_restored_after_a_measurement():
    import throughput

    before = torch.backends.cudnn.benchmark
    with throughput.cudnn_benchmark(not before):
        assert torch.backends.cudnn.benchmark is (not before)
        torch.backends.cudnn.benchmark = before  # what Lightning's Trainer(benchmark=...) does
    assert torch.backends.cudnn.benchmark is before


def test_a_phase_that_hangs_is_stopped_at_its_budget():
    import gpu

    t = time.monotonic()
    code, tail = gpu.run_child([PYTHON, "-c", "import time; print('started', flush=True); time.sleep(120)"],
                               timeout=2)
    assert code is None and "started" in tail and time.monotonic() - t < 30


@pytest.mark.slow
def test_gpu_benchmark_keeps_earlier_phases_and_records_the_error_of_a_failing_one(tmp_path):
    """A phase that fails (here: the sweep's data folder is a file) loses neither the phases
    before it nor the JSON; its error is in the file and the exit code says it failed."""
    out, work = tmp_path / "gpu.json", tmp_path / "work"
    work.mkdir()
    (work / "phantoms-48-16").write_text("not a folder")
    cmd = [PYTHON, "benchmarks/gpu.py", "--tiny", "--skip", "throughput", "--out", str(out), "--work", str(work)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    phases = json.loads(out.read_text())["phases"]
    assert phases["loader"]["cache"]["images"] > 0 and "error" not in phases["loader"]
    assert "NotADirectoryError" in phases["sweep"]["error"]


def test_the_plain_loop_trains_at_the_precision_the_cli_would_choose(tmp_path, monkeypatch):
    """(a) and (b) compare like with like: the plain loop asks the CLI's default_precision, not
    torch.cuda.is_bf16_supported() (which says yes on GPUs that only emulate bf16). Here the CLI
    is made to choose bf16 on the CPU, and the loop's forward pass must then run under it."""
    import throughput

    import models.backbones as backbones

    args = throughput.parse_args(["--device", "cpu", "--backbone", "resnet18", "--image-size", "32",
                                  "--batch-size", "2", "--steps", "1", "--warmup", "0", "--work", str(tmp_path)])
    seen: list[torch.dtype] = []

    def tiny(*args, **kwargs) -> torch.nn.Module:  # the loop is under test, not the backbone
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        model.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(backbones, "build_backbone", tiny)
    monkeypatch.setattr(throughput, "default_precision", lambda accelerator: "bf16-mixed")
    row = throughput.plain_loop(args, "cpu", compiled=False)
    assert row["precision"] == "bf16-mixed" and seen == [torch.bfloat16]
    monkeypatch.setattr(throughput, "default_precision", lambda accelerator: "32-true")
    seen.clear()
    assert throughput.plain_loop(args, "cpu", compiled=False)["precision"] == "32-true" and seen == [torch.float32]
