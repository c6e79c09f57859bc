"""Fault injection: each case says what it injects and what must hold afterwards. Faults are
injected into real `cli.py` runs launched by the real offline runner (tests/fault_callbacks.py),
except the four-runner race, which uses the fast fake program of test_offline_runner.py.

Also covered elsewhere: SIGTERM to a 2-process DDP run at four landing moments
(test_ddp.py), a corrupt image mid-data (test_bad_inputs.py), SIGKILL of the runner and
resume (test_offline_runner.py::test_resume_after_sigkill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT
from test_offline_runner import counted, fake, load, points, write  # noqa: F401  (fake is a fixture)

from sweeps.analysis import load_offline_runs
from sweeps.files import create_custom_sweep_config

TESTS = Path(__file__).resolve().parent

TINY_CONSTANTS = {
    "demo.body_part": "null",
    "data.image_size": 32,
    "data.batch_size": 8,
    "data.num_workers": 0,
    "trainer.max_epochs": 2,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.enable_progress_bar": False,
    "run.wandb": "disabled",
    "run.test_after_fit": False,
}


def run_runner(sweep: dict, tmp_path: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(TESTS), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "sweeps", "run", str(path), "--out", str(tmp_path / "out"),
                           "--quiet", "--seed", "0", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_injected_faults_are_recorded_as_failed_with_reasons_and_the_sweep_goes_on(hand_data, tmp_path):
    """Injects, one run each: NaN weights (divergence), torch.OutOfMemoryError, SIGKILL of
    the run mid-epoch; plus one healthy run. Must hold: the runner exits 0, every run is
    recorded, the faulty ones as failed with their reason, the healthy one finished."""
    faults = ["fault_callbacks.PoisonWeights", "fault_callbacks.OutOfMemory", "fault_callbacks.KillSelf", "null"]
    sweep = create_custom_sweep_config(
        method="grid", name="faults", config="configs/demo.yaml",
        parameters={"trainer.callbacks": {"values": faults}, "data.root": {"value": str(hand_data)},
                    **{k: {"value": v} for k, v in TINY_CONSTANTS.items()}},
    )
    done = run_runner(sweep, tmp_path, "--max-failures", "5")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, runs = load_offline_runs(tmp_path / "out")
    by_fault = {r["params"]["trainer.callbacks"]: r for r in runs}
    assert set(by_fault) == set(faults)
    diverged = by_fault["fault_callbacks.PoisonWeights"]
    assert diverged["state"] == "failed" and "diverged" in diverged["reason"] and "nan" in diverged["reason"]
    # it stopped fast: at the first poisoned step, not after all epochs
    assert not (tmp_path / "out" / diverged["run_dir"] / "sweep_history.jsonl").exists()
    oom = by_fault["fault_callbacks.OutOfMemory"]
    assert oom["state"] == "failed" and "out of GPU memory" in oom["reason"]
    killed = by_fault["fault_callbacks.KillSelf"]
    assert killed["state"] == "failed" and "SIGKILL" in killed["reason"]
    healthy = by_fault["null"]
    assert healthy["state"] == "finished" and len(healthy["history"]) == 2


@pytest.mark.slow
def test_failures_in_a_row_stop_the_sweep_with_a_message(hand_data, tmp_path):
    """Injects: every run diverges. Must hold: after --max-failures in a row the runner stops
    with exit 1 and says why; the failed runs are recorded."""
    sweep = create_custom_sweep_config(
        method="grid", name="allbad", config="configs/demo.yaml",
        parameters={"trainer.callbacks": {"value": "fault_callbacks.PoisonWeights"},
                    "model.lr": {"values": [1e-3, 2e-3, 3e-3, 4e-3]},
                    "data.root": {"value": str(hand_data)}, **{k: {"value": v} for k, v in TINY_CONSTANTS.items()}},
    )
    done = run_runner(sweep, tmp_path, "--max-failures", "2")
    assert done.returncode == 1
    assert "in a row" in done.stdout + done.stderr
    _, runs = load_offline_runs(tmp_path / "out")
    assert [r["state"] for r in runs] == ["failed", "failed"]


def test_four_runners_on_one_sqlite_sweep_lose_and_duplicate_nothing(fake, tmp_path):  # noqa: F811
    """Injects: four runner processes started at once on one SQLite file, a 12-point grid.
    Must hold: every point run exactly once, every trial accounted for, all runners exit 0."""
    xs = [round(0.05 * i, 2) for i in range(1, 13)]
    sweep = fake({"x": {"values": xs}, "epochs": {"value": 2}, "delay": {"value": 0.05}})
    sweep_file = write(tmp_path, sweep)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    procs = [subprocess.Popen([sys.executable, "-m", "sweeps", "run", sweep_file, "--storage", storage,
                               "--out", str(tmp_path / f"out{i}"), "--quiet"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output
    trials = load(tmp_path, storage=storage)
    assert sorted(points(trials)) == [(x,) for x in xs]  # none lost, none twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted(trials))
    runs = [json.loads(p.read_text()) for p in tmp_path.glob("out*/runs/*/run.json")]
    assert len(runs) == len(xs) and all(r["state"] == "finished" for r in runs)
