"""Fault injection: each case says what it injects and what must hold afterwards. Faults are
injected into real `cli.py` runs launched by the real offline runner (tests/fault_callbacks.py),
except the four-runner race, which uses the fast fake program of test_offline_runner.py.

Also covered elsewhere: SIGTERM to a 2-process DDP run at four landing moments
(test_ddp.py), a corrupt image mid-data (test_bad_inputs.py), with the fake program
(test_offline_runner.py): SIGKILL of the runner and resume from the checkpoint, a dead runner
on another host continued (same trial) by a live one, SIGINT and continue from the checkpoint (and from an
unreadable one), hyperband meeting a run that finished training, the lifeline's hard stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, run_dirs
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


@pytest.mark.slow  # several processes, 10-40 s on two cores
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


def _group_alive(pgid: int) -> list[int]:
    """Processes (not zombies) of a process group: a run, its DDP ranks, its loader workers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def _metric_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "sweep_history.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if "val/auroc" in r]


@pytest.mark.slow
def test_sigkill_of_the_runner_leaves_no_process_and_the_sweep_continues_the_run(hand_data, tmp_path):
    """Injects: SIGKILL of `python -m sweeps run` while its real cli.py run is training. Must
    hold: the run notices (the lifeline), saves last.ckpt and is gone, with every process of its
    group, within 35 s; the sweep started again continues that run from last.ckpt in its
    directory (each epoch once in its history) and completes every point once."""
    constants = dict(TINY_CONSTANTS, **{"trainer.max_epochs": 4, "trainer.limit_train_batches": 4})
    sweep = create_custom_sweep_config(
        method="grid", name="killed", config="configs/demo.yaml",
        parameters={"model.lr": {"values": [1e-3, 2e-3]}, "data.root": {"value": str(hand_data)},
                    **{k: {"value": v} for k, v in constants.items()}},
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=str(TESTS), CUDA_VISIBLE_DEVICES="")
    runner = subprocess.Popen([sys.executable, "-m", "sweeps", "run", str(path), "--out", str(tmp_path / "out"),
                               "--quiet", "--heartbeat", "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    record, deadline = None, time.monotonic() + 400
    while record is None:
        assert time.monotonic() < deadline and runner.poll() is None, "no run reached its first epoch"
        time.sleep(0.2)
        for run_json in (tmp_path / "out").glob("runs/*/run.json"):
            info = json.loads(run_json.read_text())
            if info["state"] == "running" and _metric_rows(run_json.parent):
                record = info
    runner.kill()
    killed = time.monotonic()
    runner.wait()
    pgid = record["child"]["pid"]  # the runner starts each run as a process group of its own
    while _group_alive(pgid):
        assert time.monotonic() - killed < 35, f"processes of the run still alive: {_group_alive(pgid)}"
        time.sleep(0.2)
    print(f"the run outlived its SIGKILLed runner by {time.monotonic() - killed:.1f} s")
    run_dir = tmp_path / "out" / record["run_dir"]
    log = (run_dir / "output.log").read_text()
    assert "the sweep runner that started this run is gone" in log and (run_dir / "checkpoints/last.ckpt").is_file()
    trained_before = len(_metric_rows(run_dir))
    done = run_runner(sweep, tmp_path, "--heartbeat", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, runs = load_offline_runs(tmp_path / "out")
    counted_runs = [r for r in runs if r["state"] in ("finished", "stopped", "failed")]
    assert sorted(float(r["params"]["model.lr"]) for r in counted_runs) == [0.001, 0.002]
    assert all(r["state"] == "finished" for r in counted_runs)
    continued = [r for r in runs if r["number"] == record["trial"]]  # the same trial, continued
    assert len(runs) == 2 and [(r["state"], r["run_dir"]) for r in continued] == [("finished", record["run_dir"])], runs
    assert [r["epoch"] for r in _metric_rows(run_dir)] == [0, 1, 2, 3]  # one continuous history
    assert "continues run" in done.stdout and trained_before >= 1


@pytest.mark.slow
@pytest.mark.parametrize("late", [False, True])
def test_a_stop_after_training_lets_the_test_finish_within_the_grace(fit_args, tmp_path, caplog, late):
    """Injects: SIGTERM right after training (the agent stopping a run at its last band).
    Must hold: the test after fit still runs when it fits in the grace; past the grace it is
    skipped, the run says why and still ends as a clean stop (checkpoints there, exit path 0)."""
    from training.cli import cli_main

    fault = "fault_callbacks.LateSigtermAfterFit" if late else "fault_callbacks.SigtermAfterFit"
    cli = cli_main(fit_args("configs/demo.yaml", "--run.test_after_fit=true", "--trainer.max_epochs=2",
                            f"--trainer.callbacks+={fault}"))
    (run_dir,) = run_dirs(tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    if late:
        assert cli.stopped and not (run_dir / "test_report.json").exists()
        assert "the test after fit was skipped because the run was stopped" in caplog.text
    else:
        assert not cli.stopped and (run_dir / "test_report.json").is_file()
        assert "after training ended: the evaluation goes on" in caplog.text


@pytest.mark.slow
def test_resume_by_hand_continues_the_run_in_its_directory(fit_args, tmp_path, caplog):
    """What the README tells W&B-agent users: `cli.py fit --config <run dir>/config.yaml
    --ckpt_path <run dir>/checkpoints/last.ckpt`. Must hold: the same directory, each epoch once
    in the sweep history; an unreadable checkpoint starts over, saying so."""
    from training.cli import cli_main

    cli_main(fit_args("configs/demo.yaml", "--trainer.max_epochs=2", "--run.test_after_fit=false"))
    (run_dir,) = run_dirs(tmp_path)
    first = _metric_rows(run_dir)
    resume = ["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints/last.ckpt")]
    cli_main([*resume, "--trainer.max_epochs=3"])
    assert run_dirs(tmp_path) == [run_dir]
    rows = _metric_rows(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[:2] == first
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    cli_main([*resume, "--trainer.max_epochs=1"])
    assert "training starts over from epoch 0" in caplog.text
    assert [r["epoch"] for r in _metric_rows(run_dir)] == [0] and run_dirs(tmp_path) == [run_dir]


# ---- run directories given from outside (XRAY_RUN_DIR): checked, never written over, locked ----


def _fit_into(run_dir, monkeypatch, capsys, tmp_path) -> tuple[int, str]:
    from training.program import main as cli

    monkeypatch.setenv("XRAY_RUN_DIR", str(run_dir))
    monkeypatch.setattr(sys, "argv", ["cli.py", "fit", "--config", "configs/demo.yaml", "--run.wandb=disabled",
                                      f"--data.root={tmp_path / 'data'}", "--trainer.max_epochs=1"])
    code = cli()
    return code, capsys.readouterr().err


def test_a_run_directory_from_outside_is_refused_when_it_is_not_a_runs_own(tmp_path, monkeypatch, capsys):
    """A finished run's directory keeps its metrics.csv (Lightning's CSV logger would delete it);
    `..`, `/` and a folder of other files are refused; each in one line, before anything runs."""
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "metrics.csv").write_text("epoch,val/auroc\n0,0.9\n")
    (finished / "training.json").write_text(json.dumps({"epochs": 1, "done": True}))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "patients.txt").write_text("not a run")
    cases = {finished: "holds a finished run (its training.json says training is done)",
             tmp_path / "a" / "..": "may not contain '..'", Path("/"): "filesystem root",
             notes: "holds files no run wrote"}
    for run_dir, message in cases.items():
        code, err = _fit_into(run_dir, monkeypatch, capsys, tmp_path)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], (run_dir, err)
    assert (finished / "metrics.csv").read_text() == "epoch,val/auroc\n0,0.9\n"
    assert not (tmp_path / "data").exists()  # refused before the demo data was made


def test_a_second_fit_on_a_run_directory_in_use_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "output.log").write_text("")  # as the runner leaves it before the run starts
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rundir.create import adopt_run_dir; "
                               "adopt_run_dir(sys.argv[1], from_env=True, continuing=False); print('held', flush=True); "
                               "time.sleep(60)", str(busy)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _fit_into(busy, monkeypatch, capsys, tmp_path)
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "another `fit` is writing into this run directory now" in errors[0]
    finally:
        holder.kill()
        holder.wait()
    from rundir.create import adopt_run_dir

    assert adopt_run_dir(busy, from_env=True, continuing=False) == busy.resolve()  # free again: the lock died with it


def test_continuing_from_another_models_checkpoint_is_refused_naming_the_options(fit_args, tmp_path):
    """A resnet34 last.ckpt copied into a resnet18 run: LightningCLI would take the checkpoint's
    hyperparameters over the command's and the run go on as resnet34. Refused, naming them; the
    same settings, or ones that do not change what is trained, continue."""
    import torch

    from rundir.records import check_same_model
    from training.cli import cli_main

    run = tmp_path / "runs" / "demo" / "r18"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"hyper_parameters": {"backbone": "resnet34", "lr": 0.01, "num_classes": 2, "compile": True}}, ckpt)
    with pytest.raises(ValueError) as refused:
        cli_main(fit_args("configs/demo.yaml", "--model.backbone=resnet18", "--model.lr=0.001", f"--ckpt_path={ckpt}"))
    message = str(refused.value)
    assert "model.backbone='resnet34' in the checkpoint, 'resnet18' in this command" in message
    assert "model.lr=0.01 in the checkpoint, 0.001 in this command" in message
    assert "num_classes" not in message and "compile" not in message
    assert (run / "config.yaml").read_text() == "{}"  # nothing of the run was written over
    check_same_model(ckpt, {"backbone": "resnet34", "lr": 0.01, "compile": False, "dropout": 0.5})  # same model


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    """rundir.atomic, the one writer of reports, predictions, cv.json and sweep files. A new file
    gets the permissions the user's umask gives any new file (the old training copy made every
    report 0644, readable by all, under a private umask)."""
    from rundir.atomic import replacing, write_atomic

    target = tmp_path / "cv.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError, match="crash"), replacing(target) as f:
        f.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["cv.json"]
    umask = os.umask(0o077)
    try:
        write_atomic(target, "new")
    finally:
        os.umask(umask)
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o600
