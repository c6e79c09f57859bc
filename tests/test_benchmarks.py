"""Smoke tests of the benchmark scripts with the tiniest settings: they run and print their figures.
The targets (ratios) are for real hardware and are not asserted here."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import PYTHON, ROOT


@pytest.mark.slow
def test_throughput_benchmark_prints_every_figure(tmp_path):
    cmd = [PYTHON, "benchmarks/throughput.py", "--device", "cpu", "--backbone", "resnet18", "--image-size", "32",
           "--batch-size", "4", "--steps", "2", "--warmup", "1", "--workers", "2", "--loader-batches", "2",
           "--count", "24", "--raw-size", "64", "64", "--memory-size", "64", "--work", str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for figure in ("(a) plain loop eager", "(b) cli.py fit from cache eager", "(c) loader raw png16",
                   "(c) loader cache", "(b)/(a) eager:", "cache/raw", "workers' memory", "peak RSS"):  # fmt: skip
        assert figure in out.stdout, figure
    assert "nan images/s" not in out.stdout


@pytest.mark.slow
def test_sweep_efficiency_benchmark_prints_epochs_and_best(tmp_path):
    cmd = [PYTHON, "benchmarks/sweep_efficiency.py", "--count", "2", "--max-epochs", "2", "--image-size", "32",
           "--limit-train-batches", "2", "--work", str(tmp_path)]  # fmt: skip
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
def test_gpu_benchmark_tiny_writes_every_figure(tmp_path):
    """`make bench-gpu`'s script on CPU with the tiniest settings: every phase runs and lands in
    the JSON file (the figures themselves mean nothing on CPU)."""
    out = tmp_path / "gpu.json"
    cmd = [PYTHON, "benchmarks/gpu.py", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and set(result["phases"]) == {"throughput", "loader", "sweep"}
    model = result["phases"]["throughput"]["resnet18"]
    assert model["plain_eager"]["images_per_s"] > 0 and model["cli_fit_eager"]["images_per_s"] > 0
    assert result["phases"]["loader"]["cache_over_raw"] > 0
    sweep = result["phases"]["sweep"]
    assert sweep["k1"]["runs_per_hour"] > 0 and sweep["k2"]["speedup_vs_k1"] > 0
