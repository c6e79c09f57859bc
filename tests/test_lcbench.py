"""The LCBench surrogate program (benchmarks/lcbench/) run by the real offline runner, so that the
sweep-efficiency benchmark cannot rot. The fast tests use the analytic stand-in curve (`toy`,
no onnxruntime: CI installs only .[dev,postgres]); the slow one replays YAHPO's model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import PYTHON, ROOT

from benchmarks.lcbench.surrogate import lcbench_config, toy_curves
from benchmarks.lcbench.surrogate_cli import TEST_FILE
from benchmarks.lcbench.sweep_files import PROGRAM, lcbench_sweep
from sweeps.contract.history import HISTORY_FILE, TRAINING_FILE, read_history
from sweeps.files import render_yaml
from sweeps.hyperband import hyperband_bands
from sweeps.main import main
from sweeps.runner import runner as runner_loop

METRIC = "val/balanced_acc"


def run_sweep(tmp_path, sweep: dict, *extra: str) -> list[dict]:
    path = tmp_path / "lcbench.yaml"
    path.write_text(render_yaml(sweep))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--wandb", "disabled", *extra]) == 0
    return [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/run.json"))]


def test_runner_sweeps_the_toy_surrogate_with_hyperband(tmp_path, monkeypatch):
    """Random search + W&B's rule on the stand-in curve: every run logs the curve it was given,
    one row per epoch; runs that finish write training.json done and their test figures; runs
    the rule stops end cleanly (exit 0) at a band."""
    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    early = {"type": "hyperband", "min_iter": 1, "eta": 2}
    sweep = lcbench_sweep("random", early, surrogate="toy", minute_s=0.4, max_epochs=4)
    runs = run_sweep(tmp_path, sweep, "--count", "4", "--workers", "1", "--seed", "2")
    assert len(runs) == 4 and all(r["exit_code"] == 0 for r in runs)
    bands = hyperband_bands(early)
    for r in runs:
        run_dir = tmp_path / "out" / r["run_dir"]
        expected = toy_curves("3945", [lcbench_config(r["params"])], 4)[0, :, 3]
        history = read_history(run_dir / HISTORY_FILE, METRIC)
        assert history == pytest.approx(expected[: len(history)].tolist()) and r["history"] == history
        if r["state"] == "finished":
            assert len(history) == 4 and json.loads((run_dir / TRAINING_FILE).read_text())["done"] is True
            assert json.loads((run_dir / TEST_FILE).read_text())["test/balanced_acc"] == pytest.approx(expected[-1] - 0.01)
        else:
            # stopped at a band; its last epoch may end while SIGTERM is on its way (then it has all 4)
            assert r["state"] == "stopped" and "hyperband" in r["reason"] and len(history) >= bands[0]
    assert any(r["state"] == "stopped" for r in runs), [r["state"] for r in runs]


def _start(tmp_path) -> subprocess.Popen:
    argv = [PYTHON, PROGRAM, "fit", "--config", "benchmarks/lcbench/lcbench.yaml", "--lcbench.surrogate=toy",
            "--lcbench.minute_s=2", "--trainer.max_epochs=20"]
    return subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, XRAY_RUN_DIR=str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_rows(tmp_path, rows: int = 1, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(read_history(tmp_path / HISTORY_FILE, METRIC)) < rows:
        assert time.monotonic() < deadline, "no history row"
        time.sleep(0.02)


def test_sigterm_stops_the_program_cleanly(tmp_path):
    proc = _start(tmp_path)
    _wait_rows(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "stopped (SIGTERM)" in out
    assert 1 <= len(read_history(tmp_path / HISTORY_FILE, METRIC)) < 20
    assert json.loads((tmp_path / TRAINING_FILE).read_text()) == {"epochs": 20, "done": False}


def test_the_program_stops_when_its_runner_is_gone(tmp_path):
    read_fd, write_fd = os.pipe()
    argv = [PYTHON, PROGRAM, "fit", "--config", "benchmarks/lcbench/lcbench.yaml", "--lcbench.surrogate=toy",
            "--lcbench.minute_s=2", "--trainer.max_epochs=20"]
    env = dict(os.environ, XRAY_RUN_DIR=str(tmp_path), XRAY_RUNNER_LIFELINE=str(read_fd))
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            pass_fds=(read_fd,))
    os.close(read_fd)
    _wait_rows(tmp_path)
    os.close(write_fd)  # what the kernel does when the runner dies
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "the sweep runner is gone" in out


@pytest.mark.parametrize("bad, said", [("--sweep.metric=val/auroc", "--sweep.metric=val/auroc"),
                                       ("--lcbench.task=1", "lcbench.task '1'"),
                                       ("--trainer.max_epochs=60", "trainer.max_epochs=60")])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, bad, said):
    argv = [PYTHON, PROGRAM, "fit", "--config", "benchmarks/lcbench/lcbench.yaml", "--lcbench.surrogate=toy", bad]
    done = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, XRAY_RUN_DIR=str(tmp_path)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and said in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_runner_replays_the_lcbench_model(tmp_path, monkeypatch):
    """With YAHPO's ONNX model (pip install '.[bench]'): the runs log the surrogate's curve."""
    pytest.importorskip("onnxruntime")
    from benchmarks.lcbench.surrogate import curves

    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sweep = lcbench_sweep("bayes", {"type": "hyperband", "min_iter": 2, "eta": 3}, task="167149", minute_s=0.01,
                          max_epochs=12)
    runs = run_sweep(tmp_path, sweep, "--count", "4", "--workers", "2")
    assert len(runs) == 4 and {r["state"] for r in runs} <= {"finished", "stopped"}
    for r in runs:
        expected = curves("167149", [lcbench_config(r["params"])], 12)[0, :, 3]
        assert r["history"] == pytest.approx(expected[: len(r["history"])].tolist(), rel=1e-5)


@pytest.mark.slow
def test_sweep_efficiency_benchmark_prints_every_method(tmp_path):
    """benchmarks/sweep_efficiency_lcbench.py with the tiniest settings: every method and K lands
    in the table and the JSON (the figures themselves are for benchmarks/README.md)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "e.json"
    cmd = [PYTHON, "benchmarks/sweep_efficiency_lcbench.py", "--instances", "1", "--seeds", "1", "--budget", "2",
           "--reference", "20", "--grid", "2:3", "--raw", str(tmp_path / "raw.jsonl"), "--out", str(out),
           "--plot", str(tmp_path / "e.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    names = ("random", "random+wandb", "bayes+wandb", "random+asha", "random+hyperband", "bayes+asha")
    assert {f"{n}|{k}" for n in names for k in (1, 8)} | {"random+wandb(2:3)|1"} == set(summary)
    for line in ("random+wandb(2:3)", "bayes+asha"):
        assert line in done.stdout
    assert all(0 <= s["regret_final"] <= s["regret_at_10pct"] for s in summary.values())
