"""Cross-validated trials: patient-level stratified folds, one command = one run with one
fold mean per epoch, the operating point on out-of-fold predictions, the ensemble on test,
SIGTERM, and a CV sweep through the offline runner."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import pytest
from conftest import PYTHON, ROOT, TINY

from datamodules.datamodule import XrayDataModule
from datamodules.records import DataError
from training.cli import cli_main


def dm(root, **kw) -> XrayDataModule:
    return XrayDataModule(root=str(root), classes=["normal", "abnormal"], num_workers=0, **kw)


def test_folds_are_patient_level_stratified_deterministic_and_leave_test_alone(hand_data):
    plain = dm(hand_data)
    folds = [dm(hand_data, folds=3, fold=k) for k in range(3)]
    test = {r.rel for r in plain.split_records["test"]}
    non_test = {r.rel for r in plain.records} - test
    for data in folds:
        assert {r.rel for r in data.split_records["test"]} == test  # the test split is never in a fold
        assert {r.rel for r in data.split_records["train"] + data.split_records["val"]} == non_test
        assert {r.label for r in data.split_records["val"]} == {"normal", "abnormal"}  # stratified
        train_patients = {r.patient_id for r in data.split_records["train"]}
        assert not train_patients & {r.patient_id for r in data.split_records["val"]}
    vals = [{r.rel for r in data.split_records["val"]} for data in folds]
    assert set().union(*vals) == non_test and sum(map(len, vals)) == len(non_test)  # each image once
    patients = [{r.patient_id for r in data.split_records["val"]} for data in folds]
    assert all(not a & b for i, a in enumerate(patients) for b in patients[i + 1:])  # no patient in two folds
    sizes = sorted(len(p) for p in patients)
    assert sizes[-1] - sizes[0] <= 2
    again = dm(hand_data, folds=3, fold=1)
    assert [r.rel for r in again.split_records["val"]] == [r.rel for r in folds[1].split_records["val"]]
    other = dm(hand_data, folds=3, fold=1, split_seed=7)
    assert {r.rel for r in other.split_records["val"]} != vals[1]


@pytest.mark.parametrize(("kw", "message"), [
    ({"folds": 1, "fold": 0}, "data.folds must be at least 2"),
    ({"folds": 40, "fold": 0}, "data.folds=40 is more than"),
    ({"folds": 3, "fold": 3}, r"data.fold must be in 0..2"),
    ({"fold": 1}, "data.fold=1 needs data.folds"),
])
def test_bad_fold_settings_are_refused_naming_the_option(hand_data, kw, message):
    with pytest.raises(DataError, match=message):
        dm(hand_data, **kw)


def test_cv_options_are_checked(fit_args):
    with pytest.raises(ValueError, match="cv.folds must be 0"):
        cli_main(fit_args("configs/demo.yaml", "--cv.folds=1"))
    with pytest.raises(ValueError, match="cv.folds trains every fold"):
        cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--data.fold=0"))
    with pytest.raises(ValueError, match="cv.folds_per_device must be at least 1, got 0"):
        cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--cv.folds_per_device=0"))


def test_folds_per_device_has_an_upper_bound():
    """A huge cv.folds_per_device was accepted, and the slots of a GPU run were built as a list
    of that many entries per GPU before being cut to the folds (10**9: memory exhausted)."""
    from training.options import CVOptions

    assert CVOptions(folds=5, folds_per_device=64).folds_per_device == 64
    with pytest.raises(ValueError, match=r"cv.folds_per_device must be at most 64, got 1000000000: .*CUDA context"):
        CVOptions(folds=5, folds_per_device=10**9)


def test_folds_share_a_device_k_at_a_time_with_the_runners_slot_logic(monkeypatch):
    """cv.folds_per_device: a 5-fold trial on one GPU trains its folds side by side (as the
    runner's --trials-per-gpu does for trials); never more slots than folds; the inherited
    CUDA_VISIBLE_DEVICES is read as CUDA reads it (it stops at an invalid entry)."""
    import rundir.slots as slots
    from rundir import fold_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert fold_slots("gpu", 1, folds_per_device=5, folds=5) == ["3"] * 5
    assert fold_slots("gpu", 1, folds_per_device=1, folds=5) == ["3"]  # one after the other, as before
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert fold_slots("gpu", 2, folds_per_device=2, folds=3) == ["0", "1", "0"]  # spread over the GPUs first
    assert fold_slots("auto", "auto", folds_per_device=3, folds=5) == ["0", "1", "0", "1", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,-1,GPU-bb")
    assert fold_slots("cuda", -1, folds_per_device=2, folds=5) == ["GPU-aa", "GPU-aa"]
    with pytest.raises(ValueError, match=r"trainer.devices=\[1\]: GPU index\(es\) \[1\] outside the 1 GPU"):
        fold_slots("gpu", [1], folds_per_device=1, folds=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: CPU processes, K per device
    assert fold_slots("auto", 2, folds_per_device=2, folds=3) == [None] * 3
    assert fold_slots("cpu", 1, folds_per_device=1, folds=3) == [None]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(slots, "probe", lambda: ["0"])  # counted with nvidia-smi -L, never torch.cuda
    assert fold_slots("auto", 1, folds_per_device=4, folds=4) == ["0"] * 4


def test_the_cv_parent_says_when_training_ended_so_hyperband_spares_its_evaluation(tmp_path, monkeypatch):
    """The CV parent's training.json: the epochs it plans while its folds train, `done` once
    they all have, so that the runner (training_done) never stops the trial during its ensemble
    evaluation. Folds here are the tests' stand-in program, two side by side on the CPU."""
    from types import SimpleNamespace

    from test_offline_runner import FAKE_CLI

    import training.cv as cv
    from sweeps.contract.history import read_history, training_done

    program = tmp_path / "fold.py"
    program.write_text(FAKE_CLI)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    options = SimpleNamespace(cv=SimpleNamespace(folds=2, folds_per_device=2))
    parent = SimpleNamespace(config_init={"fit": options}, subcommand="fit", run_dir=run_dir,
                             trainer=SimpleNamespace(loggers=[], max_epochs=3))
    said = []

    def write_training(path, epochs, done):
        said.append((epochs, done, len(read_history(run_dir / "sweep_history.jsonl", "val/s"))))
        cv_write(path, epochs, done)

    cv_write = cv.write_training
    monkeypatch.setattr(cv, "write_training", write_training)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    folds = cv.CrossValidation(parent, ["--epochs=3", "--delay=0.05", "--sweep.metric=val/s"], "val/s",
                               ("cpu", 1), program=program)
    assert folds.slots == [None, None]
    folds.train()
    assert said == [(3, False, 0), (3, True, 3)]  # planned before the first fold started; done after the last
    state = json.loads((run_dir / "training.json").read_text())
    assert state == {"epochs": 3, "done": True}
    history = read_history(run_dir / "sweep_history.jsonl", "val/s")
    assert history == pytest.approx([0.5 * (1 + e) / 3 * 1.05 for e in range(3)])  # the folds' mean per epoch
    assert training_done(run_dir / "training.json", len(history))
    envs = [json.loads((run_dir / f"fold_{k}" / "env.json").read_text()) for k in range(2)]
    cores = len(os.sched_getaffinity(0))
    assert [e["OMP_NUM_THREADS"] for e in envs] == [str(max(1, cores // 2))] * 2  # side by side: cores shared


@pytest.mark.slow  # ~29 s: two fold processes and the parent
def test_two_fold_run_end_to_end(fit_args, tmp_path):
    from wandb_records import history, run_file

    from evaluation import choose_threshold

    cli = cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--trainer.devices=2", "--trainer.max_epochs=2",
                            "--run.wandb=offline", "--eval.bootstrap_resamples=200",
                            "--trainer.limit_val_batches=1.0", "--trainer.limit_test_batches=1.0"))
    run_dir = cli.run_dir
    assert [p.name for p in (tmp_path / "runs").glob("*/*")] == [run_dir.name]  # one run
    for k in range(2):
        assert (run_dir / f"fold_{k}" / "checkpoints" / "last.ckpt").is_file()
        assert (run_dir / f"fold_{k}" / "test_report.json").is_file()  # each fold's own test figures
    rows = [json.loads(line) for line in (run_dir / "sweep_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # the fold mean once per epoch
    for r in rows:
        folds = [r["val/auroc/fold_0"], r["val/auroc/fold_1"]]
        assert r["val/auroc"] == pytest.approx(np.mean(folds)) and r["val/auroc_std"] == pytest.approx(np.std(folds))
    logged = [r for r in history(run_file(run_dir)) if "val/auroc" in r]
    assert [r["epoch"] for r in logged] == [0, 1]  # one W&B run, one row per iteration
    # out-of-fold predictions: every image outside the test split once, by the fold that did not train on it
    oof = list(csv.DictReader(open(run_dir / "oof_predictions.csv")))
    non_test = [r for r in cli.datamodule.records if r.split != "test"]
    assert sorted(r["path"] for r in oof) == sorted(r.rel for r in non_test)
    fold_of = {r.rel: cli.datamodule.fold_of[r.patient_id] for r in non_test}
    assert all(int(r["fold"]) == fold_of[r["path"]] for r in oof)
    saved = json.loads((run_dir / "cv.json").read_text())
    labels = np.array([r["label"] == "abnormal" for r in oof], dtype=int)
    expected = choose_threshold("youden", np.array([float(r["prob_abnormal"]) for r in oof]), labels)
    assert saved["operating_point"]["threshold"]["value"] == pytest.approx(expected.value, rel=1e-5)
    report = json.loads((run_dir / "test_report.json").read_text())
    assert report["ensemble"]["folds"] == 2 and len(report["ensemble"]["fold_test"]) == 2
    assert report["threshold"]["value"] == pytest.approx(expected.value, rel=1e-5)
    assert report["counts"]["images"] == len(cli.datamodule.split_records["test"])
    assert (run_dir / "config.yaml").is_file()
    # predict with the fold ensemble, at the CV run's operating point
    pred = cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), f"--cv.run_dir={run_dir}"])
    rows = list(csv.DictReader(open(pred.run_dir / "predictions.csv")))
    assert len(rows) == report["counts"]["images"]
    assert all(float(r["threshold"]) == pytest.approx(expected.value, rel=1e-5) for r in rows)


@pytest.mark.slow  # ~44 s: two fold processes, stopped and waited for
def test_sigterm_stops_every_fold_cleanly(hand_data, tmp_path):
    import psutil

    args = [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}",
            "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", "--run.name=cv", *TINY,
            "--cv.folds=2", "--trainer.devices=2", "--trainer.max_epochs=200", "--run.wandb=offline"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "runs" / "demo" / "cv"
    deadline = time.monotonic() + 240
    # wait until both folds are training (each has logged a validation epoch)
    while not all((run_dir / f"fold_{k}" / "sweep_history.jsonl").is_file() for k in range(2)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    for k in range(2):
        assert (run_dir / f"fold_{k}" / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "fold_0" / "fold_done.json").exists()


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_a_fold_that_fails_fails_the_run_with_its_reason(fit_args, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    from training.cv import FoldFailed

    with pytest.raises(FoldFailed, match="fold 0 of 2 failed: .*out of GPU memory"):
        cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--trainer.devices=1",
                          "--trainer.callbacks+=fault_callbacks.OutOfMemory"))


@pytest.mark.slow
def test_a_killed_cv_run_rerun_keeps_its_finished_folds_and_continues_the_rest(fit_args, tmp_path, monkeypatch):
    from training.cv import FoldFailed

    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run_dir = tmp_path / "cv_run"
    monkeypatch.setenv("XRAY_RUN_DIR", str(run_dir))  # as the offline runner continues a trial
    args = fit_args("configs/demo.yaml", "--cv.folds=2", "--trainer.devices=1", "--trainer.max_epochs=2",
                    "--trainer.callbacks+=fault_callbacks.KillSelfInFold")
    monkeypatch.setenv("KILL_FOLD", "1")
    with pytest.raises(FoldFailed, match="fold 1 of 2 failed"):
        cli_main(args)
    monkeypatch.delenv("KILL_FOLD")
    fold0, fold1 = run_dir / "fold_0", run_dir / "fold_1"
    assert (fold0 / "fold_done.json").is_file() and not (fold1 / "fold_done.json").exists()
    kept = {p: p.stat().st_mtime_ns for p in (fold0 / "fold_done.json", fold0 / "checkpoints" / "last.ckpt")}
    first_epoch = (fold1 / "sweep_history.jsonl").read_text().splitlines()
    assert len(first_epoch) == 1  # fold 1 died starting its second epoch
    # the same directory with other settings: refused, naming it, rather than mixing folds
    with pytest.raises(ValueError, match="holds a cross-validated run with other settings"):
        cli_main([*args, "--model.lr=0.01"])

    cli = cli_main(args)  # the same command again
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the finished fold was not trained again
    assert "Restoring states from the checkpoint" in (fold1 / "output.log").read_text()
    rows = (fold1 / "sweep_history.jsonl").read_text().splitlines()
    assert rows[:1] == first_epoch and [json.loads(r)["epoch"] for r in rows] == [0, 1]
    parent = [json.loads(r) for r in (run_dir / "sweep_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in parent] == [0, 1]  # the fold mean once per epoch, across both attempts
    assert (run_dir / "cv.json").is_file() and (run_dir / "test_report.json").is_file()
    assert cli.run_dir == run_dir
    with pytest.raises(ValueError, match="holds a finished run"):  # finished now: never written over
        cli_main(args)


def test_the_runner_continues_an_interrupted_cv_trial_in_its_directory(tmp_path):
    from sweeps.runner.jobs import resume_point

    run_dir = tmp_path / "runs" / "0003"
    (run_dir / "fold_0" / "checkpoints").mkdir(parents=True)
    resumed, note = resume_point({"run_path": str(run_dir), "of": 3})
    assert resumed == run_dir and "folds that finished are kept" in note
    plain = tmp_path / "runs" / "0004"
    plain.mkdir()
    assert resume_point({"run_path": str(plain), "of": 4})[0] is None  # no checkpoint, no folds: starts over


def test_generate_makes_a_cv_sweep_from_any_preset_and_export_keeps_the_folds(tmp_path):
    import yaml

    from sweeps.main import main

    out = tmp_path / "cv.yaml"
    assert main(["generate", "--sweep_config", "base", "--cfg", "configs/demo.yaml", "--cv", "5",
                 "-o", str(out)]) == 0
    sweep = yaml.safe_load(out.read_text())
    assert "--cv.folds=5" in sweep["command"]
    assert sweep["command"].index("--cv.folds=5") < sweep["command"].index("${args}")
    from sweeps.analysis.results import best_config
    from sweeps.files import Sweep

    saved = {"model": {"lr": 0.001, "optimizer": "adamw"}, "cv": {"folds": 5, "run_dir": None}}  # a run's config.yaml
    assert best_config(Sweep.from_dict(sweep), saved)["cv"] == {"folds": 5}


def _offline_sweep(tmp_path, sweep: dict, timeout: int, *extra: str) -> list[dict]:
    """`python -m sweeps run` on `sweep` into tmp_path/sweep; every run's run.json, in order."""
    import yaml

    path = tmp_path / f"{sweep['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = subprocess.run([PYTHON, "-m", "sweeps", "run", str(path), "--out", str(tmp_path / "sweep"), "--quiet", *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("runs/*/run.json"))]


@pytest.mark.slow
def test_cv_sweep_through_the_offline_runner(hand_data, tmp_path):
    import yaml

    from sweeps.files import create_custom_sweep_config

    tiny = {a.split("=")[0][2:]: yaml.safe_load(a.split("=", 1)[1]) for a in TINY}
    sweep = create_custom_sweep_config(
        method="grid", name="cv", config="configs/demo.yaml", cv_folds=2,
        parameters={"model.lr": {"values": [1e-3, 3e-3]}, "data.root": {"value": str(hand_data)},
                    "demo.body_part": {"value": "null"}, **{k: {"value": v} for k, v in tiny.items()},
                    "trainer.devices": {"value": 2}, "trainer.max_epochs": {"value": 2}})
    runs = _offline_sweep(tmp_path, sweep, timeout=900)
    assert [r["state"] for r in runs] == ["finished", "finished"]
    assert all(len(r["history"]) == 2 for r in runs)
    assert Counter(p.name for p in (tmp_path / "sweep").glob("runs/*/fold_*")) == {"fold_0": 2, "fold_1": 2}


@pytest.mark.slow
def test_hyperband_stops_a_poor_cv_trial_early_in_the_offline_runner(hand_data, tmp_path):
    """Three CV trials of the same training; their objectives weight its AUROC 0.9, 1.0 and
    0.05, so the last is poor by construction. W&B's rule (eta 3) at band 1: the threshold is
    the second best of the three values, so only the third trial is stopped, after its first
    fold-mean epoch (the second, better than the first, is never below the threshold)."""
    import yaml
    from wandb_records import history, run_file

    tiny = {a.split("=")[0][2:]: yaml.safe_load(a.split("=", 1)[1]) for a in TINY if "wandb" not in a}
    objectives = [{"val/auroc": 0.9}, {"val/auroc": 1.0}, {"val/auroc": 0.05}]
    sweep = {
        "program": "cli.py", "name": "cvhb", "method": "grid",
        "metric": {"name": "val/objective", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
        "parameters": {"sweep.objective": {"values": objectives}, "data.root": {"value": str(hand_data)},
                       "demo.body_part": {"value": "null"}, **{k: {"value": v} for k, v in tiny.items()},
                       "trainer.devices": {"value": 2}, "trainer.max_epochs": {"value": 4},
                       "trainer.limit_val_batches": {"value": 1.0}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                    "--sweep.metric=val/objective", "--cv.folds=2", "${args}"],
    }
    runs = _offline_sweep(tmp_path, sweep, 1500, "--keep-checkpoints", "all")  # the stopped folds' last.ckpt
    assert [r["state"] for r in runs] == ["finished", "finished", "stopped"], [r.get("reason") for r in runs]
    assert len(runs[2]["history"]) < 4 and "hyperband" in runs[2]["reason"]
    stopped_dir = tmp_path / "sweep" / runs[2]["run_dir"]
    for k in range(2):  # both folds of the stopped trial ended cleanly
        assert (stopped_dir / f"fold_{k}" / "checkpoints" / "last.ckpt").is_file()
    rows = [r for r in history(run_file(stopped_dir)) if "val/objective" in r]
    assert [r["epoch"] for r in rows] == list(range(len(rows))) and len(rows) == len(runs[2]["history"])


@pytest.mark.slow
def test_cv_selection_benchmark_prints_its_figures(tmp_path):
    cmd = [PYTHON, "benchmarks/cv_selection.py", "--seeds", "1", "--folds", "2", "--quick", "--images", "80",
           "--work", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "truly better" in out.stdout and "2-fold CV" in out.stdout and "one validation split" in out.stdout
