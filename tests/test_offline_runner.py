"""The offline sweep runner (`python -m sweeps run`), mostly with a fake program that keeps
cli.py's contract by importing it (tests/stand_in_cli.py: XRAY_RUN_DIR, sweep_history.jsonl,
training.json, SIGTERM or the lifeline -> exit 0, `error:` + exit 2) so that runs take a
fraction of a second."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import optuna
import pytest
import yaml

import rundir.slots as slots
from sweeps.contract.history import read_history
from sweeps.files import Sweep
from sweeps.main import main
from sweeps.runner import agent_argv, build_space
from sweeps.runner import runner as runner_loop
from sweeps.runner import storage as runner_storage

ROOT = Path(__file__).resolve().parents[1]
METRIC = "val/score"

# The stand-in program (tests/stand_in_cli.py), runnable from any folder: it imports the
# contract it keeps from this checkout.
FAKE_CLI = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + (ROOT / "tests" / "stand_in_cli.py").read_text()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    program = tmp_path / "fake_cli.py"
    program.write_text(textwrap.dedent(FAKE_CLI))
    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU slots without importing torch

    def sweep(parameters: dict, method: str = "grid", **extra) -> dict:
        return {
            "program": str(program), "name": "fake", "method": method,
            "metric": {"name": METRIC, "goal": "maximize"}, **extra,
            "parameters": parameters,
            "command": ["${env}", "${interpreter}", "${program}", f"--sweep.metric={METRIC}", "${args}"],
        }

    return sweep


def write(tmp_path: Path, sweep: dict, name: str = "sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return str(path)


def run(tmp_path, sweep, *extra: str, out: str = "out") -> int:
    return main(["run", write(tmp_path, sweep), "--out", str(tmp_path / out), "--quiet", *extra])


def load(tmp_path, out: str = "out", name: str = "fake", storage: str | None = None) -> list:
    url = storage or f"sqlite:///{tmp_path / out / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=url).get_trials()


def counted(trials) -> list:
    return [t for t in trials if t.user_attrs.get("state") in ("finished", "stopped", "failed")]


def points(trials, names=("x",)) -> list:
    return [tuple(t.user_attrs["params"][n] for n in names) for t in counted(trials)]


def test_grid_visits_every_point_once_and_writes_the_contract(fake, tmp_path):
    sweep = fake({"x": {"values": [0.1, 0.5, 0.9]}, "mode": {"values": ["ok", "null"]}, "epochs": {"value": 2}})
    assert run(tmp_path, sweep) == 0
    trials = load(tmp_path)
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(points(trials, ("x", "mode"))) == sorted((x, m) for x in (0.1, 0.5, 0.9) for m in ("ok", "null"))
    out = tmp_path / "out"
    assert yaml.safe_load((out / "sweep.yaml").read_text())["parameters"] == sweep["parameters"]
    for t in trials:
        attrs = t.user_attrs
        assert attrs["run_dir"] == f"runs/{t.number:04d}" and attrs["state"] == "finished"
        x = attrs["params"]["x"]
        assert attrs["history"] == pytest.approx([x / 2, x]) and t.value == max(attrs["history"])
        assert t.intermediate_values == pytest.approx({0: x / 2, 1: x})  # optuna-dashboard's learning curve
        assert attrs["exit_code"] == 0 and attrs["wall_s"] > 0 and attrs["reason"] is None
        # the argv is the agent's, "null" stays the string null
        assert attrs["argv"] == agent_argv(sweep, attrs["params"])
        run_dir = out / attrs["run_dir"]
        assert json.loads((run_dir / "run.json").read_text())["state"] == "finished"
        assert (run_dir / "output.log").is_file() and (run_dir / "sweep_history.jsonl").is_file()
    assert any("--mode=null" in t.user_attrs["argv"] for t in trials)
    # a second start runs nothing more: every point is done
    assert run(tmp_path, sweep) == 0 and len(load(tmp_path)) == 6


def test_offline_dir_readable_by_analysis(fake, tmp_path):
    from sweeps.analysis import load_offline_runs

    assert run(tmp_path, fake({"x": {"values": [0.2, 0.8]}})) == 0
    _, runs = load_offline_runs(tmp_path / "out")
    assert [r["state"] for r in runs] == ["finished", "finished"]
    assert max(r["value"] for r in runs) == pytest.approx(0.8)


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_same_seed_same_sequence(fake, tmp_path, method):
    params = {"x": {"min": 0.0, "max": 1.0}, "n": {"min": 1, "max": 9}, "mode": {"values": ["ok", "null"]}}
    sweep = fake(params, method=method)
    for out, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert run(tmp_path, sweep, "--count", "4", "--seed", seed, "--workers", "1", out=out) == 0
    seqs = {out: [t.user_attrs["params"] for t in load(tmp_path, out)] for out in "abc"}
    assert len(seqs["a"]) == 4 and seqs["a"] == seqs["b"] and seqs["a"] != seqs["c"]


def test_bayes_models_the_function_after_its_startup_trials(fake, tmp_path):
    """TPE samples at random for its first 10 trials (Optuna's n_startup_trials), then from its
    model: on a function with a known optimum the later configurations gather near it."""
    peak = (0.73, 0.2)
    sweep = fake({"x": {"min": 0.0, "max": 1.0}, "y": {"min": 0.0, "max": 1.0},
                  "peak": {"value": ",".join(map(str, peak))}, "epochs": {"value": 1}, "delay": {"value": 0.0}},
                 method="bayes")
    assert run(tmp_path, sweep, "--count", "30", "--seed", "0", "--workers", "1") == 0
    trials = sorted(counted(load(tmp_path)), key=lambda t: t.number)
    assert len(trials) == 30
    distance = [math.dist((t.user_attrs["params"]["x"], t.user_attrs["params"]["y"]), peak) for t in trials]
    startup, modelled = distance[:10], distance[10:]
    # random sampling puts 7% of the square (radius 0.15) near the peak: about 1.4 of 20 trials
    assert sum(d < 0.15 for d in modelled) >= 6, distance
    assert statistics.median(modelled) < 0.5 * statistics.median(startup), distance
    assert min(modelled) < 0.05, distance


SUPPORTED = {
    "int_uniform": ({"distribution": "int_uniform", "min": -3, "max": 5}, int),
    "uniform": ({"distribution": "uniform", "min": 0.1, "max": 0.2}, float),
    "q_uniform_int": ({"distribution": "q_uniform", "min": 0, "max": 12, "q": 4}, int),
    "q_uniform": ({"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}, float),
    "q_uniform_unaligned": ({"distribution": "q_uniform", "min": 0.05, "max": 0.95, "q": 0.1}, float),
    "log_uniform_values": ({"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2}, float),
    "inv_log_uniform_values": ({"distribution": "inv_log_uniform_values", "min": 2.0, "max": 200.0}, float),
    "q_log_uniform_values": ({"distribution": "q_log_uniform_values", "min": 8, "max": 256, "q": 8}, int),
    "categorical": ({"values": [[1, 2], None, "null", 3]}, object),
    "categorical_w_probabilities": (
        {"distribution": "categorical_w_probabilities", "values": ["a", "b", "c"], "probabilities": [0.8, 0.2, 0.0]},
        str),
}


def test_every_supported_distribution_within_bounds():
    sweep = {"method": "random", "parameters": {**{k: v[0] for k, v in SUPPORTED.items()}, "fixed": {"value": 7}}}
    space = build_space(Sweep.from_dict(sweep))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, list] = {k: [] for k in SUPPORTED}
    for _ in range(200):
        values = space.values(study.ask(space.distributions).params)
        assert values["fixed"] == 7 and list(values) == list(sweep["parameters"])
        for name, value in values.items():
            if name != "fixed":
                seen[name].append(value)
    for name, (spec, kind) in SUPPORTED.items():
        assert all(isinstance(v, kind) for v in seen[name]), name
        if "min" in spec:
            q = spec.get("q", 0)
            assert all(spec["min"] - q / 2 <= v <= spec["max"] + q / 2 for v in seen[name]), name
        if spec.get("q"):
            assert all(abs(v / spec["q"] - round(v / spec["q"])) < 1e-9 for v in seen[name]), name
    assert set(map(repr, seen["categorical"])) == {"[1, 2]", "None", "'null'", "3"}
    assert seen["categorical_w_probabilities"].count("a") > 120 and "c" not in seen["categorical_w_probabilities"]
    lo = [v for v in seen["log_uniform_values"] if v < 1e-4]
    assert 0.2 < len(lo) / 200 < 0.5  # log-uniform: a third of the draws below 1e-4


@pytest.mark.parametrize("dist", ["normal", "log_normal", "q_normal", "q_log_normal", "beta", "q_beta"])
def test_unsupported_distribution_is_a_clear_error(fake, tmp_path, capsys, dist):
    sweep = fake({"x": {"distribution": dist}}, method="random")
    assert run(tmp_path, sweep) == 2
    err = capsys.readouterr().err
    assert f"parameters.x: distribution {dist} has no Optuna equivalent" in err and "log_uniform_values" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_grid_rejects_continuous_and_enumerates_int_and_q_uniform(fake, tmp_path, capsys):
    assert run(tmp_path, fake({"x": {"min": 0.0, "max": 1.0}})) == 2
    assert "grid search needs categorical" in capsys.readouterr().err
    space = build_space(Sweep.from_dict({"method": "grid", "parameters": {
        "a": {"distribution": "int_uniform", "min": 1, "max": 3},
        "b": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}}}))
    points = [space.values(p) for p in space.grid_points()]
    assert len(points) == 12 and {p["b"] for p in points} == {0.0, 0.25, 0.5, 0.75}  # W&B: arange, max out


def test_hyperband_stops_bad_runs(fake, tmp_path):
    et = {"type": "hyperband", "min_iter": 1, "eta": 2}
    sweep = fake({"x": {"values": [1.0, 0.9, 0.1, 0.05]}, "epochs": {"value": 6}, "delay": {"value": 0.3}},
                 early_terminate=et)
    assert run(tmp_path, sweep, "--workers", "1") == 0
    by_x = {t.user_attrs["params"]["x"]: t for t in load(tmp_path)}
    assert [by_x[x].user_attrs["state"] for x in (1.0, 0.9)] == ["finished", "finished"]
    for x in (0.1, 0.05):
        t = by_x[x]
        assert t.user_attrs["state"] == "stopped" and t.state == optuna.trial.TrialState.COMPLETE
        assert t.user_attrs["reason"].startswith(f"hyperband: {METRIC}") and "below bracket threshold" in t.user_attrs["reason"]
        assert 1 <= len(t.user_attrs["history"]) < 6 and t.value == max(t.user_attrs["history"])
        assert t.user_attrs["exit_code"] == 0


def test_failed_runs_have_reasons_and_the_sweep_goes_on(fake, tmp_path, capsys):
    sweep = fake({"mode": {"values": ["crash", "error", "kill", "ok"]}})
    assert run(tmp_path, sweep) == 0
    by_mode = {t.user_attrs["params"]["mode"]: t for t in load(tmp_path)}
    reasons = {m: (t.user_attrs["state"], t.user_attrs["reason"], t.state.name) for m, t in by_mode.items()}
    assert reasons == {
        "crash": ("failed", "RuntimeError: CUDA out of memory (fake)", "FAIL"),
        "error": ("failed", "model.lr must be positive, got -1", "FAIL"),
        "kill": ("failed", "killed by signal SIGKILL", "FAIL"),
        "ok": ("finished", None, "COMPLETE"),
    }
    assert by_mode["error"].user_attrs["exit_code"] == 2
    assert "best run" in capsys.readouterr().out


def test_failures_in_a_row_stop_the_sweep(fake, tmp_path, capsys):
    sweep = fake({"mode": {"value": "crash"}, "x": {"min": 0.0, "max": 1.0}}, method="random")
    assert run(tmp_path, sweep, "--count", "10", "--max-failures", "3") == 1
    assert len(load(tmp_path)) == 3
    assert "3 runs failed in a row" in capsys.readouterr().out


def test_gpu_slots_env_and_ddp_arguments(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # no scheduler allocation: --gpus are device ids
    monkeypatch.setattr(slots, "probe", lambda: ["0", "1"])  # a machine with two GPUs
    sweep = fake({"x": {"values": [0.1, 0.2, 0.3, 0.4]}})
    assert run(tmp_path, sweep, "--gpus", "0,1", "--project", "p1", "--wandb", "disabled") == 0
    envs = [json.loads((tmp_path / "out" / t.user_attrs["run_dir"] / "env.json").read_text()) for t in load(tmp_path)]
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} <= {"0", "1"}
    assert all(e["XRAY_GPU_SLOT"] == e["CUDA_VISIBLE_DEVICES"] for e in envs)  # it fails should it see no GPU
    assert all(e["WANDB_MODE"] == "disabled" and e["WANDB_PROJECT"] == "p1" for e in envs)
    # /usr/bin/env python is the runner's interpreter
    assert all(os.path.dirname(e["python"]) == os.path.dirname(sys.executable) for e in envs)
    assert run(tmp_path, sweep, "--gpus", "0,1", "--gpus-per-trial", "2", out="ddp") == 0
    trials = load(tmp_path, "ddp")
    assert all(t.user_attrs["argv"][-3:-1] == ["--trainer.devices=2", "--trainer.strategy=ddp"] for t in trials)
    env = json.loads((tmp_path / "ddp" / trials[0].user_attrs["run_dir"] / "env.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["WANDB_MODE"] == "offline"


def test_parallel_cpu_runs_split_the_cores_between_them(fake, tmp_path, monkeypatch):
    """Two runs on the CPU each get half the cores (not one thread per core each, which
    oversubscribes); a value the user set, one run at a time, and GPU runs are left alone."""
    from rundir.slots import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    sweep = fake({"x": {"values": [0.1, 0.2]}})
    assert run(tmp_path, sweep, "--workers", "2") == 0
    envs = [json.loads((tmp_path / "out" / t.user_attrs["run_dir"] / "env.json").read_text()) for t in load(tmp_path)]
    assert [e["OMP_NUM_THREADS"] for e in envs] == [str(max(1, cores // 2))] * 2
    assert cpu_threads([None]) is None and cpu_threads(["0", "1"]) is None
    assert cpu_threads([None] * (4 * cores)) == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads([None, None]) is None  # the user's own setting stays


def _runner(tmp_path: Path, sweep_file: str, *extra: str, out: str = "out",
            env: Optional[dict] = None) -> subprocess.Popen:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "sweeps", "run", sweep_file, "--out", str(tmp_path / out),
                             "--quiet", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _run_states(out: Path) -> list[str]:
    states = []
    for path in out.glob("runs/*/run.json"):
        try:
            states.append(json.loads(path.read_text())["state"])
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    return states


def _alive(pid: int) -> bool:
    """A process that is not a zombie (a run of a killed runner is nobody's child to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _going(out: Path) -> Optional[dict]:
    """run.json of a running run that has finished at least one epoch."""
    for path in out.glob("runs/*/run.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            record = json.loads(path.read_text())
            if record["state"] == "running" and read_history(path.parent / "sweep_history.jsonl", METRIC):
                return record
    return None


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_resume_after_sigkill(fake, tmp_path):
    """SIGKILL of the runner: its run notices at once (the lifeline), saves its checkpoint and
    exits 0; the sweep started again retries that trial (its heartbeat stopped) and continues
    the run from its checkpoint, in its directory, with one continuous history; every point
    runs once and nothing finished is lost."""
    xs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    sweep = fake({"x": {"values": xs}, "epochs": {"value": 6}, "delay": {"value": 0.15}})
    sweep_file = write(tmp_path, sweep)
    proc = _runner(tmp_path, sweep_file, "--heartbeat", "1")
    out = tmp_path / "out"
    _wait_for(lambda: _run_states(out).count("finished") >= 2 and _going(out))
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    orphan = _going(out) or next(json.loads(p.read_text()) for p in out.glob("runs/*/run.json")
                                 if json.loads(p.read_text())["state"] == "running")
    _wait_for(lambda: not _alive(orphan["child"]["pid"]), timeout=35)
    outlived = time.monotonic() - killed
    run_dir = out / orphan["run_dir"]
    stopped = json.loads((run_dir / "stopped.json").read_text())
    assert stopped["by"] == "the sweep runner is gone" and outlived < 5, (stopped, outlived)
    print(f"the run outlived its SIGKILLed runner by {outlived:.2f} s")
    before = {t.number: t.value for t in load(tmp_path) if t.state == optuna.trial.TrialState.COMPLETE}
    assert main(["run", sweep_file, "--out", str(out), "--quiet", "--heartbeat", "1"]) == 0
    trials = load(tmp_path)
    assert sorted(points(trials)) == [(x,) for x in xs]  # every point once, none lost or repeated
    assert all({t.number: t.value for t in trials}[n] == v for n, v in before.items())  # finished kept
    assert len(trials) == len(xs) and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    (rerun,) = [t for t in trials if t.number == orphan["trial"]]  # continued as the same trial
    assert rerun.user_attrs["state"] == "finished" and rerun.user_attrs["resumed"]
    assert rerun.user_attrs["run_dir"] == orphan["run_dir"]  # continued in place, from its checkpoint
    x = rerun.user_attrs["params"]["x"]
    curve = [x * (1 + e) / 6 for e in range(6)]
    assert rerun.user_attrs["history"] == pytest.approx(curve)  # one row per epoch, none twice
    assert rerun.intermediate_values == pytest.approx(dict(enumerate(curve)))  # optuna-dashboard's curve
    starts = [json.loads(line)["epoch"] for line in (run_dir / "starts.jsonl").read_text().splitlines()]
    assert starts == [0, stopped["epoch"]] and stopped["epoch"] >= 1  # lost at most the epoch in progress
    assert "--ckpt_path=" + str(run_dir.resolve() / "checkpoints" / "last.ckpt") in rerun.user_attrs["argv"]


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_interrupt_stops_runs_and_a_rerun_continues(fake, tmp_path):
    sweep = fake({"x": {"values": [0.1, 0.2, 0.3]}, "mode": {"value": "hang"}, "epochs": {"value": 1}})
    sweep_file = write(tmp_path, sweep)
    proc = _runner(tmp_path, sweep_file)
    _wait_for(lambda: "running" in _run_states(tmp_path / "out"))
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to continue" in output
    (trial,) = load(tmp_path)  # given back: it waits, as the same trial, for the next start
    assert trial.state == optuna.trial.TrialState.WAITING and trial.user_attrs["state"] == "interrupted"


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_two_runners_share_sqlite_storage(fake, tmp_path):
    xs = [round(0.1 * i, 1) for i in range(1, 7)]
    grid = fake({"x": {"values": xs}, "epochs": {"value": 2}, "delay": {"value": 0.05}})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    files = [write(tmp_path, grid, "grid.yaml"), write(tmp_path, dict(grid, method="random", parameters={
        "x": {"min": 0.0, "max": 1.0}, "epochs": {"value": 2}, "delay": {"value": 0.05}}, name="rnd"), "rnd.yaml")]
    procs = [_runner(tmp_path, f, "--storage", storage, *extra, out=f"{Path(f).stem}{i}")
             for f, extra in ((files[0], ()), (files[1], ("--count", "4"))) for i in range(2)]
    for p in procs:
        output, _ = p.communicate(timeout=120)
        assert p.returncode == 0, output
    trials = load(tmp_path, storage=storage)
    assert sorted(points(trials)) == [(x,) for x in xs] and len(counted(trials)) == len(trials)
    rnd = load(tmp_path, storage=storage, name="rnd")
    assert len(counted(rnd)) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted(rnd))
    assert {t.user_attrs["run_dir"] for t in trials} == {f"runs/{t.number:04d}" for t in trials}


SITECUSTOMIZE = """
import os, socket
if os.environ.get("FAKE_HOSTNAME"):
    socket.gethostname = lambda: os.environ["FAKE_HOSTNAME"]
"""


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_a_dead_runner_on_another_host_is_retried_by_a_live_one(fake, tmp_path):
    """Two runners on one storage, presenting different host names; one is SIGKILLed while its
    run is going. The live one must see, by Optuna's heartbeat alone, that the trial is dead,
    fail it and run its configuration again, continuing the run from its checkpoint; every
    point runs once (--count exact) and the live runner exits 0."""
    dead_runner_is_retried(fake, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


def dead_runner_is_retried(fake, tmp_path: Path, storage: str, load_url: Optional[str] = None) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    xs = [round(0.1 * i, 1) for i in range(1, 7)]
    sweep = fake({"x": {"values": xs}, "epochs": {"value": 6}, "delay": {"value": 0.25}})
    sweep_file = write(tmp_path, dict(sweep, name="dead"), "dead.yaml")
    procs = {host: _runner(tmp_path, sweep_file, "--storage", storage, "--heartbeat", "1", out=f"out-{host}",
                           env={"PYTHONPATH": str(tmp_path / "site"), "FAKE_HOSTNAME": host})
             for host in ("host-a", "host-b")}
    _wait_for(lambda: _going(tmp_path / "out-host-a"))
    procs["host-a"].kill()
    killed = time.time()
    procs["host-a"].wait()
    orphan = _going(tmp_path / "out-host-a")
    assert orphan is not None and orphan["runner"]["host"] == "host-a"
    output, _ = procs["host-b"].communicate(timeout=180)
    assert procs["host-b"].returncode == 0, output
    trials = load(tmp_path, storage=load_url or storage, name="dead")
    assert sorted(points(trials)) == [(x,) for x in xs] and len(counted(trials)) == len(xs)
    assert len(trials) == len(xs) and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    (rerun,) = [t for t in trials if t.number == orphan["trial"]]  # given back by B, continued as the same trial
    assert rerun.user_attrs["runner"]["host"] == "host-b" and rerun.user_attrs["resumed"]
    run_dir = Path(rerun.user_attrs["run_path"])
    assert run_dir == (tmp_path / "out-host-a" / orphan["run_dir"]).resolve()  # A's run, continued by B
    starts = [json.loads(line) for line in (run_dir / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[1]["epoch"] >= 1
    retried_after = starts[1]["time"] - killed
    print(f"the dead host's run continued on the live host {retried_after:.1f} s after the kill")
    assert retried_after < 10  # heartbeat 1 s: failed after 3 missed beats, retried at the next check
    assert f"run {orphan['trial']:04d} lost its runner" in output


def test_hyperband_spares_a_run_that_finished_training(fake, tmp_path):
    """The worst run reaches the hyperband band at its last epoch: it has finished training and
    is in its test after fit. It must not be stopped (its test figures would be lost)."""
    et = {"type": "hyperband", "min_iter": 2, "eta": 2}
    sweep = fake({"x": {"values": [1.0, 0.9, 0.1]}, "epochs": {"value": 2}, "delay": {"value": 0.1},
                  "test_delay": {"value": 1.5}}, early_terminate=et)
    assert run(tmp_path, sweep, "--workers", "1") == 0
    worst = next(t for t in load(tmp_path) if t.user_attrs["params"]["x"] == 0.1)
    assert (worst.user_attrs["state"], worst.user_attrs["reason"]) == ("finished", None)
    test = json.loads((tmp_path / "out" / worst.user_attrs["run_dir"] / "test.json").read_text())
    assert test == {"stopped_during_test": False}


@pytest.mark.slow  # several processes, 10-40 s on two cores
@pytest.mark.parametrize("corrupt", [False, True])
def test_an_interrupted_run_continues_from_its_checkpoint(fake, tmp_path, corrupt):
    """SIGINT to the runner stops its run cleanly (checkpoint saved); the next start continues
    that run from the checkpoint in its directory. An unreadable checkpoint: it starts over in a
    fresh directory, and the runner says so."""
    sweep_file = write(tmp_path, fake({"x": {"values": [0.3]}, "epochs": {"value": 8}, "delay": {"value": 0.25}}))
    proc = _runner(tmp_path, sweep_file, "--heartbeat", "1")
    out = tmp_path / "out"
    _wait_for(lambda: _going(out))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    (first,) = load(tmp_path)  # the interrupted trial, given back: it waits
    assert first.user_attrs["state"] == "interrupted" and first.state == optuna.trial.TrialState.WAITING
    run_dir = out / first.user_attrs["run_dir"]
    if corrupt:
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    rerun_proc = _runner(tmp_path, sweep_file)
    output, _ = rerun_proc.communicate(timeout=120)
    assert rerun_proc.returncode == 0, output
    (rerun,) = load(tmp_path)
    assert rerun.number == first.number and rerun.user_attrs["state"] == "finished"
    assert rerun.user_attrs["history"] == pytest.approx([0.3 * (1 + e) / 8 for e in range(8)])
    if corrupt:
        assert "checkpoint" in output and "unreadable" in output and "starts over" in output
        assert rerun.user_attrs["run_dir"] != first.user_attrs["run_dir"] and not rerun.user_attrs["resumed"]
    else:
        assert rerun.user_attrs["run_dir"] == first.user_attrs["run_dir"] and rerun.user_attrs["resumed"]
        starts = [json.loads(line)["epoch"] for line in (run_dir / "starts.jsonl").read_text().splitlines()]
        assert starts[0] == 0 and starts[1] >= 1 and len(starts) == 2


class _NoBeat:
    """The runner's heartbeat thread, not needed where nothing waits for a heartbeat."""

    def add(self, trial_id: int) -> None: ...

    def discard(self, trial_id: int) -> None: ...


def _runner_on(fake, tmp_path: Path, url: str, count: int = 1) -> runner_loop.Runner:
    """A Runner on the storage `url` (not started: its steps are called one by one)."""
    from sweeps.runner.progress import Progress

    sweep = Sweep.from_dict(fake({"x": {"values": [0.1, 0.2, 0.3]}, "epochs": {"value": 1}}))
    space = build_space(sweep)
    store = runner_storage.Storage(url, "fake", "maximize", optuna.samplers.RandomSampler(0), heartbeat=1)
    runner = runner_loop.Runner(sweep.to_dict(), space, store, sweep_dir=tmp_path / "out", root=tmp_path,
                                slots=[None], count=count, progress=Progress(count, live=False, stream=io.StringIO()),
                                settings=runner_loop.LaunchSettings())
    runner.heart = _NoBeat()
    return runner


def _interrupted_job(runner: runner_loop.Runner, trial, run_dir: Path):
    """The job of `trial` whose run this runner stopped on a signal (it has exited)."""
    from sweeps.runner.jobs import Job

    proc = subprocess.Popen(["true"])
    proc.wait()
    run_dir.mkdir(parents=True, exist_ok=True)
    attrs = {"run_dir": run_dir.name, "run_path": str(run_dir), "state": "running", "params": dict(trial.params)}
    runner.store.set_attrs(trial.number, {"run_path": str(run_dir), "state": "running"})
    return Job(proc=proc, slot=0, run_dir=run_dir, trial=trial, attrs=attrs, interrupted=True,
               trial_id=runner.store.trial_id(trial.number))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_stopped_run_continues_as_the_same_trial_in_any_runner(fake, tmp_path, kind):
    """Issue 20: a run stopped by a signal gives its trial back; the next runner (another array
    task) claims the same trial number with its parameters and directory, --count stays exact,
    and the first runner can no longer record anything for it."""
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else str(tmp_path / "s.journal")
    a, b = _runner_on(fake, tmp_path, url), _runner_on(fake, tmp_path, url)
    trial = a.next_trial()
    job = _interrupted_job(a, trial, tmp_path / "out" / "runs" / f"{trial.number:04d}")
    a.finish(job, 0)
    (given,) = a.store.trials()
    assert given.state == optuna.trial.TrialState.WAITING and given.user_attrs["state"] == "interrupted"
    again = b.next_trial()
    assert again.number == trial.number and again.params == trial.params
    assert again.user_attrs["resume"]["run_path"] == str(job.run_dir)
    assert b.next_trial() is None  # --count 1: the continued trial is the one run
    assert not optuna_trials_finish(a, trial)  # no longer a's: a cannot record it
    assert optuna_trials_finish(b, again)
    (done,) = b.store.trials()
    assert done.number == trial.number and done.state == optuna.trial.TrialState.COMPLETE


def optuna_trials_finish(runner: runner_loop.Runner, trial) -> bool:
    from sweeps.runner import trials

    with runner.store.critical():
        return trials.finish(runner.store, trial, {"state": "finished"}, 1.0, runner.me)


def test_a_waiting_runner_never_sees_a_stopped_trial_done(fake, tmp_path):
    """Issue 20, the race in Runner.finish: the old code failed the trial, then enqueued a copy
    (two writes). Between them a runner waiting for the others' runs saw no run going and nothing
    waiting, and left (or drew a new trial). After every storage write of finish, the trial
    must be running or waiting, never done, and no new trial is created."""
    a = _runner_on(fake, tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    trial = a.next_trial()
    job = _interrupted_job(a, trial, tmp_path / "out" / "runs" / "0000")
    storage, seen = a.store.storage, []
    for name in ("set_trial_state_values", "set_trial_user_attr", "create_new_trial"):
        def spy(*args, _write=getattr(storage, name), **kwargs):
            out = _write(*args, **kwargs)
            seen.append([t.state.name for t in a.store.trials()])
            return out

        setattr(storage, name, spy)
    a.finish(job, 0)
    assert seen and all(states in (["RUNNING"], ["WAITING"]) for states in seen), seen
    assert seen[-1] == ["WAITING"]


def test_a_silent_trial_is_given_back_once_and_keeps_its_number(fake, tmp_path, monkeypatch):
    """A runner killed with no signal: its trial's heartbeat goes silent; the first live runner
    gives it back (WAITING, its run directory to continue), a second check does nothing, and
    the next claim runs the same trial number. The beating trial is left alone."""
    from sweeps.runner import journal, recovery

    a = _runner_on(fake, tmp_path, str(tmp_path / "s.journal"), count=2)
    silent, beating = a.next_trial(), a.next_trial()
    for t in (silent, beating):
        a.store.storage.record_heartbeat(a.store.trial_id(t.number))
        a.store.set_attrs(t.number, {"run_path": str(tmp_path / f"run{t.number}")})
    now = journal.time.time()
    monkeypatch.setattr(journal.time, "time", lambda: now + 10)
    a.store.storage.record_heartbeat(a.store.trial_id(beating.number))
    released, _ = recovery.recover(a.store, set())
    assert [t.number for t in released] == [silent.number]
    assert recovery.recover(a.store, set())[0] == []
    states = {t.number: t.state for t in a.store.trials()}
    assert states == {silent.number: optuna.trial.TrialState.WAITING, beating.number: optuna.trial.TrialState.RUNNING}
    b = _runner_on(fake, tmp_path, str(tmp_path / "s.journal"), count=2)
    again = b.next_trial()
    assert again.number == silent.number and again.user_attrs["resume"]["run_path"] == str(tmp_path / "run0")
    assert b.next_trial() is None and len(b.store.trials()) == 2


def test_a_runner_claiming_back_its_own_given_back_trial_runs_it_once(fake, tmp_path):
    """Another runner gave this runner's trial back (its heartbeat stalled) and this runner claims
    it again before its next check: the old process is stopped before the new one starts (it went
    on untracked, its slot counted free, and the new fit was refused by its fit.lock)."""
    from sweeps.runner import trials
    from sweeps.runner.jobs import Job
    from sweeps.runner.liveness import Lifeline

    a = _runner_on(fake, tmp_path, f"sqlite:///{tmp_path / 'o.db'}")
    a.lifeline = Lifeline()
    t = a.next_trial()
    run_dir = tmp_path / "out" / "runs" / "0000"
    run_dir.mkdir(parents=True)
    a.store.set_attrs(t.number, {"run_path": str(run_dir), "state": "running"})
    old = subprocess.Popen(["sleep", "60"], start_new_session=True)
    a.jobs[t.number] = Job(proc=old, slot=0, run_dir=run_dir, trial=t, attrs={"state": "running"},
                           trial_id=a.store.trial_id(t.number))
    assert trials.give_back(a.store, a.store.storage.get_trial(a.store.trial_id(t.number)), {"state": "interrupted"})
    again = a.next_trial()
    assert again.number == t.number
    a.launch(again, 0)
    try:
        assert old.poll() is not None and a.jobs[t.number].proc is not old and len(a.jobs) == 1
    finally:
        a.jobs[t.number].kill()
        old.kill()


def test_bad_runner_options_name_the_option(fake, tmp_path, capsys):
    sweep = fake({"x": {"values": [0.5]}, "epochs": {"value": 1}})
    cases = [
        (["--heartbeat", "0.2"], "--heartbeat 0.2 is shorter than the runner's poll interval"),
        (["--heartbeat", "2.5"], "--heartbeat 2.5: give whole seconds"),
        (["--storage", "redis://localhost:6379/0"], "--storage redis://localhost:6379/0: it is not a database URL"),
        (["--storage", "sqlite://"], "an in-memory SQLite database"),
        (["--min-free-gpu-mem", "4"], "--min-free-gpu-mem: the runs use no GPU"),
    ]
    for extra, message in cases:
        assert run(tmp_path, sweep, *extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
        assert not (tmp_path / "out").exists(), extra
    # runners of one sweep must agree on the heartbeat, or one takes another's live runs for dead
    assert run(tmp_path, sweep, "--heartbeat", "2") == 0
    assert run(tmp_path, sweep, "--heartbeat", "3") == 2
    assert "the runners of this sweep beat every 2 s" in capsys.readouterr().err
    assert run(tmp_path, sweep) == 0  # without --heartbeat: the sweep's own


def test_memory_guard_starts_runs_only_on_gpus_with_free_memory(fake, tmp_path, monkeypatch, capsys):
    from sweeps.runner import placement

    clock = [1000.0]
    free = {"0": 20.0, "1": 2.0, "GPU-x": 20.0}
    guard = placement.GpuMemoryGuard(8, free_gb=lambda: dict(free), settle_s=30, clock=lambda: clock[0])
    assert guard.blocked(None) is None and guard.blocked("0") is None
    assert "below --min-free-gpu-mem 8" in guard.blocked("1") and "GPU 1 has 2.0 GB" in guard.blocked("1")
    assert guard.blocked("0,1") is not None  # a DDP slot needs every GPU of its group
    guard.started("0")
    assert "may still be allocating" in guard.blocked("0")  # the run just started there has not allocated yet
    clock[0] += 31
    free["0"] = 6.0
    assert "GPU 0 has 6.0 GB free" in guard.blocked("0")
    assert guard.blocked("GPU-x") is None  # UUIDs as CUDA_VISIBLE_DEVICES gives them
    # in the runner: two GPUs, two runs per GPU, GPU 1 nearly full: every run goes to GPU 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(slots, "probe", lambda: ["0", "1"])
    monkeypatch.setattr(placement, "nvidia_smi_free_gb", lambda: {"0": 40.0, "1": 1.5})
    monkeypatch.setattr(placement, "SETTLE_S", 0.0)
    sweep = fake({"x": {"values": [0.1, 0.2, 0.3, 0.4]}, "epochs": {"value": 2}})
    assert run(tmp_path, sweep, "--gpus", "0,1", "--trials-per-gpu", "2", "--min-free-gpu-mem", "8") == 0
    envs = [json.loads((tmp_path / "out" / t.user_attrs["run_dir"] / "env.json").read_text()) for t in load(tmp_path)]
    assert len(envs) == 4 and {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {"0"}
    assert "waiting to start a run: GPU 1 has 1.5 GB free, below --min-free-gpu-mem 8" in capsys.readouterr().out


def test_the_lifeline_stops_a_run_whose_runner_died_and_kills_one_that_does_not_stop():
    """The run's end (sweeps/contract/lifeline.py) in a child process: when the write end closes,
    the stop flag is set at once; a process that ignores it is killed HARD_STOP_S later."""
    code = textwrap.dedent("""
        import os, sys, time
        from sweeps.contract import lifeline
        from sweeps.contract.signals import StopSignal
        lifeline.HARD_STOP_S = float(sys.argv[1])
        r, w = os.pipe()
        os.environ[lifeline.LIFELINE_ENV] = str(r)
        assert lifeline.watch_runner() and lifeline.LIFELINE_ENV not in os.environ  # not for DDP children
        t0 = time.monotonic()
        os.close(w)  # the runner is gone
        while not StopSignal.requested:
            time.sleep(0.01)
        print(f"stop {StopSignal.reason} {time.monotonic() - t0:.3f}", flush=True)
        time.sleep(30)  # ignores the flag
    """)
    done = subprocess.run([sys.executable, "-c", code, "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          start_new_session=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    words = done.stdout.split()
    assert words[:6] == ["stop", "the", "sweep", "runner", "is", "gone"] and float(words[6]) < 1.0
    assert "did not stop within" in done.stderr


# ---- slow: PostgreSQL storage and the real cli.py ----------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _postgres_missing(why: str) -> None:
    """Skip where PostgreSQL is optional; fail where it was meant to be installed (.ci/run sets
    XRAY_REQUIRE_POSTGRES=1), so that CI cannot pass without running this test."""
    if os.environ.get("XRAY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{why}; XRAY_REQUIRE_POSTGRES=1 says it should be there")
    pytest.skip(why)


def test_missing_postgres_fails_where_it_is_required(monkeypatch):
    monkeypatch.setenv("XRAY_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="XRAY_REQUIRE_POSTGRES=1"):
        _postgres_missing("no initdb")
    monkeypatch.delenv("XRAY_REQUIRE_POSTGRES")
    with pytest.raises(pytest.skip.Exception, match="no initdb"):
        _postgres_missing("no initdb")


@pytest.mark.slow
def test_two_runners_share_postgresql(fake, tmp_path):
    pg = _pg_bin()
    if pg is None:
        _postgres_missing("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                          "(apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401  (the postgres extra: make setup installs it)
    except ImportError:
        _postgres_missing("psycopg2 not installed (pip install psycopg2-binary)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the server's files live outside tmp_path: pytest's base directory is private to its user
    pg_dir = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
    data, sock = pg_dir / "data", pg_dir / "sock"
    sock.mkdir()
    as_pg: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run(["chown", "-R", "postgres", str(pg_dir)], check=True)
    subprocess.run([*as_pg, str(pg / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(pg / "pg_ctl"), "-D", str(data), "-w", "-l", str(pg_dir / "pg.log"), "start",
                    "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "sweeps"],
                       check=True, capture_output=True)
        storage = f"postgresql://postgres@127.0.0.1:{port}/sweeps"
        xs = [round(0.1 * i, 1) for i in range(1, 7)]
        sweep_file = write(tmp_path, fake({"x": {"values": xs}, "epochs": {"value": 2}}))
        procs = [_runner(tmp_path, sweep_file, "--storage", storage, out=f"out{i}") for i in range(2)]
        for p in procs:
            output, _ = p.communicate(timeout=180)
            assert p.returncode == 0, output
        trials = load(tmp_path, storage=runner_storage.driver_url(storage))  # psycopg2 when no psycopg 3
        assert sorted(points(trials)) == [(x,) for x in xs] and len(counted(trials)) == len(trials)
        # a dead runner on another host, retried by a live one: PostgreSQL's clock and locks
        dead_runner_is_retried(fake, tmp_path, storage, runner_storage.driver_url(storage))
    finally:
        subprocess.run([*as_pg, str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.mark.slow
def test_end_to_end_with_cli_and_demo_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    constants = {
        "data.root": str(tmp_path / "demo"), "demo.count": 40, "demo.size": 64,
        "data.image_size": 32, "trainer.max_epochs": 2, "data.num_workers": 0, "model.backbone": "resnet18",
        "data.batch_size": 8, "trainer.enable_progress_bar": False, "run.test_after_fit": False,
    }
    sweep = {
        "program": "cli.py", "name": "e2e", "method": "grid",
        "metric": {"name": "val/auroc", "goal": "maximize"},
        "parameters": {"model.lr": {"values": [0.001, 0.003]},
                       **{k: {"value": v} for k, v in constants.items()}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                    "--sweep.metric=val/auroc", "${args}"],
    }
    assert main(["run", write(tmp_path, sweep), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    trials = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}").get_trials()
    assert len(trials) == 2
    for t in trials:
        run_dir = tmp_path / "out" / t.user_attrs["run_dir"]
        assert t.user_attrs["state"] == "finished", (run_dir / "output.log").read_text()[-3000:]
        assert len(t.user_attrs["history"]) == 2 and t.value is not None
        assert (run_dir / "config.yaml").is_file() and list((run_dir / "wandb").glob("offline-run-*"))
        # pruned after the run (--keep-checkpoints 3): the best epoch's checkpoint, no last.ckpt
        assert [p.name[:5] for p in (run_dir / "checkpoints").iterdir()] == ["best-"]
    # `best --export` reproduces the best run through cli.py fit: the very same history
    best_yaml = tmp_path / "best.yaml"
    assert main(["best", str(tmp_path / "out"), "--export", str(best_yaml)]) == 0
    best = max(trials, key=lambda t: t.value)
    done = subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/demo.yaml", "--config", str(best_yaml),
                           f"--run.root={tmp_path / 'again'}", "--run.name=best", "--run.wandb=disabled"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = [json.loads(line)["val/auroc"] for line in
             (tmp_path / "again" / "demo" / "best" / "sweep_history.jsonl").read_text().splitlines()]
    assert again == pytest.approx(best.user_attrs["history"], abs=1e-6)


@pytest.mark.slow
def test_hyperband_stops_a_real_cli_run_cleanly(hand_data, tmp_path, monkeypatch):
    """Two real cli.py runs, one after the other. The first sees its labels painted into the
    images (fault_callbacks.LabelInImage: val AUROC near 1, three epochs); the second sees blank
    images (fault_callbacks.Blindfold: exactly 0.5) and would train 30 epochs. After its second
    epoch (min_iter 2) it is below the bracket threshold (eta 3 with two runs: the better one), so
    the runner stops it by SIGTERM: `stopped`, exit 0, last.ckpt written, W&B run finished, counted as a
    completed trial; `best` and `report` read the directory."""
    from wandb_records import exit_code, run_file

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))  # the children import fault_callbacks
    constants = {
        "data.root": str(hand_data), "demo.body_part": "null", "data.image_size": 32, "data.batch_size": 8,
        "data.num_workers": 0, "trainer.max_epochs": 30, "trainer.limit_train_batches": 2,
        "trainer.limit_val_batches": 2, "trainer.limit_test_batches": 1, "trainer.enable_progress_bar": False,
        "eval.bootstrap_resamples": 200, "run.wandb": "offline",
    }
    good, blind = "fault_callbacks.LabelInImage", "fault_callbacks.Blindfold"
    sweep = {
        "program": "cli.py", "name": "hb", "method": "grid", "metric": {"name": "val/auroc", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
        "parameters": {"trainer.callbacks": {"values": [good, blind]}, **{k: {"value": v} for k, v in constants.items()}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                    "--sweep.metric=val/auroc", "${args}"],
    }
    out = tmp_path / "out"
    assert main(["run", write(tmp_path, sweep), "--out", str(out), "--quiet", "--workers", "1",
                 "--keep-checkpoints", "all"]) == 0  # the stopped run's last.ckpt stays to be seen
    trials = {t.user_attrs["params"]["trainer.callbacks"]: t for t in load(tmp_path, name="hb")}
    finished, stopped = trials[good], trials[blind]
    log = (out / stopped.user_attrs["run_dir"] / "output.log").read_text()[-3000:]
    assert finished.user_attrs["state"] == "finished" and finished.user_attrs["history"][1] > 0.9
    assert stopped.user_attrs["state"] == "stopped", log
    assert re.match(r"hyperband: val/auroc 0.5 after [26] epoch\(s\) below", stopped.user_attrs["reason"])
    assert stopped.user_attrs["exit_code"] == 0, log  # SIGTERM -> clean exit, not killed
    history = stopped.user_attrs["history"]
    assert 2 <= len(history) < 30 and set(history) == {0.5}  # stopped early, mid-training
    # counted as a completed trial, with its best value
    assert stopped.state == optuna.trial.TrialState.COMPLETE and stopped.value == 0.5
    run_dir = out / stopped.user_attrs["run_dir"]
    assert json.loads((run_dir / "run.json").read_text())["state"] == "stopped"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert exit_code(run_file(run_dir)) == 0  # the W&B run was finished, not left crashed
    # best and report on the very directory the runner wrote
    assert main(["best", str(out), "--export", str(tmp_path / "best.yaml")]) == 0
    callbacks = yaml.safe_load((tmp_path / "best.yaml").read_text())["trainer"]["callbacks"]  # as the run saved them
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]  # one callback is saved as one mapping
    assert [c["class_path"] if isinstance(c, dict) else c for c in callbacks] == [good]
    assert main(["report", str(out)]) == 0
    text = (out / "report.html").read_text()
    number = stopped.user_attrs["run_dir"].split("/")[-1]
    assert f"{number} (stopped)" in text and f"{number} stopped" in text  # dashed curve + its marker
    assert f"Best run {finished.user_attrs['run_dir'].split('/')[-1]}" in text


def test_gpu_slots_stay_inside_an_inherited_allocation(monkeypatch):
    from rundir.slots import gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # as SLURM / Kubernetes set it
    assert gpu_slots(None, 1, None) == ["2", "3"]
    assert gpu_slots("1", 1, None) == ["3"]  # --gpus indexes into the allocation
    assert gpu_slots(None, 2, None) == ["2,3"]
    assert gpu_slots(None, 1, None, trials_per_gpu=2) == ["2", "3", "2", "3"]
    with pytest.raises(ValueError, match="outside the 2 GPU"):
        gpu_slots("2", 1, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb,-1,GPU-cc")  # UUIDs; CUDA stops at -1
    assert gpu_slots(None, 1, None) == ["GPU-aa", "GPU-bb"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(slots, "probe", lambda: ["0", "1", "2", "3"])  # nvidia-smi -L, never torch.cuda
    assert gpu_slots(None, 1, 3) == ["0", "1", "2"]
    assert gpu_slots(None, 2, None, trials_per_gpu=3) == ["0,1", "2,3"] * 3


def test_gpus_that_the_machine_lacks_are_refused_before_any_run_starts(fake, tmp_path, monkeypatch, capsys):
    """`--gpus 3` on a machine with one GPU (no CUDA_VISIBLE_DEVICES): CUDA would hide the GPU
    and the run train on the CPU, silently. It is refused, naming the option, and nothing runs."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(slots, "probe", lambda: ["0"])
    assert run(tmp_path, fake({"x": {"values": [0.1]}}), "--gpus", "3") == 2
    assert "--gpus 3: GPU index(es) [3] outside the 1 GPU(s) `nvidia-smi -L` lists (0..0)" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
    monkeypatch.setattr(slots, "probe", lambda: [])  # no GPU at all
    with pytest.raises(ValueError, match="leave it out to run on the CPU"):
        slots.gpu_slots("0", 1, None)


def test_nvidia_smi_lists_gpus_not_their_mig_devices(monkeypatch):
    listing = ("GPU 0: NVIDIA H200 (UUID: GPU-aa)\n  MIG 1g.18gb     Device  0: (UUID: MIG-bb)\n"
               "GPU 1: NVIDIA H200 (UUID: GPU-cc)\n")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, listing, ""))
    assert slots.nvidia_smi_gpus() == ["0", "1"]
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 9, "", "no driver"))
    assert slots.nvidia_smi_gpus() == []


def test_a_run_given_a_gpu_it_cannot_see_fails_at_once(monkeypatch, capsys):
    """The runner gave the run GPU 0 (XRAY_GPU_SLOT, CUDA_VISIBLE_DEVICES) and CUDA sees none
    here: one line saying so, exit 2, before anything is parsed or trained."""
    from training.program import main as cli

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(slots.GPU_SLOT_ENV, "0")
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", "configs/demo.yaml"])
    assert cli() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this run was given GPU 0") and "sees no GPU" in err and len(err.splitlines()) == 1


@pytest.mark.gpu
def test_gpu_count_from_nvidia_smi_matches_cuda_and_a_given_gpu_is_seen(monkeypatch):
    """On a GPU machine: nvidia-smi -L counts the GPUs CUDA sees (no CUDA_VISIBLE_DEVICES), and a
    run given GPU 0 passes the in-run check (check_gpu_slot asks torch.cuda.device_count, which
    reads NVML first and creates no context)."""
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert len(slots.nvidia_smi_gpus()) == torch.cuda.device_count() > 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv(slots.GPU_SLOT_ENV, "0")
    slots.check_gpu_slot()
    assert not torch.cuda.is_initialized()  # the check made no CUDA context
