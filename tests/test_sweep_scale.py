"""Cost at scale (benchmarks/sweep_scale.py, issue 22 item 4): the benchmark's tiniest run, so
that it cannot rot, and the storage fix it led to."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import optuna
import pytest
from conftest import PYTHON, ROOT

from sweeps.analysis.report import NAMED_CURVES, curves_figure
from sweeps.files.sweep import Sweep
from sweeps.runner.storage import Storage


@pytest.mark.slow  # ~36 s of subprocesses; keeps `make test` within its 5 minutes
def test_sweep_scale_benchmark_runs_and_prints_every_figure(tmp_path):
    """One runner, SQLite, a study of three trials, the first written in as done (--live 2): the
    probe, the sweep, `best`, `report` and the JSON."""
    out = tmp_path / "scale.json"
    cmd = [PYTHON, "benchmarks/sweep_scale.py", "--sizes", "3", "--live", "2", "--runners", "1", "--storages", "sqlite",
           "--epochs", "2", "--minute-s", "0", "--out", str(out), "--work", str(tmp_path / "w")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for figure in ("slot overhead s/trial", "runner CPU s/trial", "ask ms", "sampler alone CPU ms", "storage calls/trial", "lock wait",
                   "best peak MB", "report s", "report.html MB"):
        assert figure in done.stdout, figure
    result = json.loads(out.read_text())["sqlite"]["3"]
    assert result["prefilled"] == 1 and result["runs"] == 2 and result["states"] == {"finished": 2}, result
    assert [a[0] for a in result["asks"]] == [1, 2]  # the probe timed the runner's own asks, after the done one
    assert result["storage"]["_get_trials"]["calls"] > 0 and result["runner_cpu_s_per_trial"] > 0
    assert 0 < result["report"]["html_mb"] < 10 and result["best"]["peak_mb"] > 0


def test_a_sqlite_sweep_storage_is_in_wal_mode(tmp_path):
    """Runners' reads must not block the writer holding the sweep's lock: in SQLite's default
    rollback mode 16 runners waited 1,757 s on the lock in a 173 s sweep of 100 trials."""
    db = tmp_path / "optuna.db"
    Storage(f"sqlite:///{db}", "s", "maximize", optuna.samplers.RandomSampler(seed=0))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_learning_curves_of_a_large_sweep_name_only_the_best_runs():
    """At 1,000 runs the legend listed 1,000 entries in a scroll box and every curve took a colour;
    now the best NAMED_CURVES runs are named and coloured, the others grey, none missing."""
    sweep = Sweep.from_dict({"method": "random", "metric": {"name": "val/auroc", "goal": "maximize"},
                             "parameters": {"model.lr": {"values": [0.1]}}})
    runs = [{"number": i, "name": f"{i:04d}", "state": "stopped" if i % 2 else "finished", "value": i / 100,
             "history": [i / 200, i / 100], "std": None} for i in range(NAMED_CURVES + 30)]
    curves = [t for t in curves_figure(sweep, runs).data if t.mode == "lines"]
    named = [t.legendgroup for t in curves if t.showlegend is not False]
    best = sorted((r["name"] for r in runs), reverse=True)[:NAMED_CURVES]
    assert len(curves) == len(runs) and sorted(named, reverse=True) == best


def test_a_closed_sweep_storage_is_one_file_again(tmp_path):
    """WAL mode keeps optuna.db-wal beside the file while a connection is open; the runner closes
    its storage at the end, so a finished sweep's optuna.db alone is whole (a backup of it, a
    truncated copy detected as such rather than "database is locked")."""
    db = tmp_path / "optuna.db"
    store = Storage(f"sqlite:///{db}", "s", "maximize", optuna.samplers.RandomSampler(seed=0))
    store.study.enqueue_trial({})  # a write: the WAL file now holds it
    store.close()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("optuna.db-")]  # no -wal, no -shm
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials) == 1
