"""Keeping a sweep's disk small: the runner's pruning after each trial and `python -m sweeps prune`
(sweeps/runner/prune.py, rundir/checkpoints.py). Hand-made run directories for the decisions,
the stand-in program for the runner and the bound, real checkpoints for test/predict after it."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from sweeps.main import main

ROOT = Path(__file__).resolve().parents[1]
METRIC = "val/score"
OLD = time.time() - 3600  # an hour ago: a run nobody writes any more


def ckpt(path: Path, size: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)  # not a torch checkpoint: removed or kept, never rewritten
    return path


def make_run(sweep_dir: Path, name: str, state, value=None, *, best=True, last=True) -> Path:
    run = sweep_dir / "runs" / name
    run.mkdir(parents=True)
    if state is not None:
        (run / "run.json").write_text(json.dumps({"state": state, "value": value, "run_dir": f"runs/{name}"}))
    if best:
        ckpt(run / "checkpoints" / "best-epoch=001.ckpt")
    if last:
        ckpt(run / "checkpoints" / "last.ckpt")
    return run


def names(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*.ckpt"))


def sweep_dir_with_study(tmp_path: Path, waiting_for: Path | None = None) -> Path:
    import optuna

    out = tmp_path / "sweep"
    out.mkdir(exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "method": "grid", "metric": {
        "name": METRIC, "goal": "maximize"}, "parameters": {"x": {"values": [1]}}, "program": "cli.py"}))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{out / 'optuna.db'}", direction="maximize")
    if waiting_for is not None:  # an interrupted trial's retry, waiting to continue in its directory
        study.enqueue_trial({"x": 1}, user_attrs={"rerun_of": 5, "resume": {"run_path": str(waiting_for), "of": 5}})
    return out


def test_prune_keeps_the_k_best_and_leaves_what_may_still_run(tmp_path, capsys):
    """The K best are ranked as `best` ranks them (a run stopped by hyperband holds its best epoch's
    value and may be the sweep's best: its checkpoint is kept), the rest of what ended is removed."""
    out = tmp_path / "sweep"
    runs = {
        "0000": make_run(out, "0000", "finished", 0.9),
        "0001": make_run(out, "0001", "finished", 0.5),
        "0002": make_run(out, "0002", "finished", 0.7),
        "0003": make_run(out, "0003", "stopped", 0.95),  # stopped by hyperband, yet `best` calls it the best
        "0004": make_run(out, "0004", "failed"),
        "0005": make_run(out, "0005", "finished", 0.99),  # its record says finished, but a retry will continue it
        "0006": make_run(out, "0006", "interrupted"),
        "0007": make_run(out, "0007", "running"),
        "0008": make_run(out, "0008", None),  # no run.json: not known
        "0009": make_run(out, "0009", "finished", 0.6),  # a fit holds it
    }
    sweep_dir_with_study(tmp_path, waiting_for=runs["0005"].resolve())
    lock = os.open(runs["0009"] / "fit.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        assert main(["prune", str(out), "--keep", "2"]) == 0
    finally:
        os.close(lock)
    shown = capsys.readouterr().out
    best, last = "checkpoints/best-epoch=001.ckpt", "checkpoints/last.ckpt"
    assert names(runs["0003"]) == names(runs["0000"]) == [best]  # the two best that may be pruned
    for gone in ("0001", "0002", "0004"):
        assert names(runs[gone]) == [], gone
    for alone in ("0005", "0006", "0007", "0008", "0009"):
        assert names(runs[alone]) == [best, last], alone
    assert "left alone: 0009: a fit holds 0009/fit.lock" in shown
    assert "removed runs/0001/checkpoints/last.ckpt" in shown and "freed 0.0 MB (8000 bytes)" in shown
    assert "kept the best 2 run(s) (--keep 2): runs/0003 (0.95), runs/0000 (0.9)" in shown


def test_dry_run_removes_nothing_and_symlinks_lead_nowhere_outside(tmp_path, capsys):
    out = tmp_path / "sweep"
    outside = tmp_path / "precious"
    ckpt(outside / "last.ckpt")
    ckpt(outside / "best-epoch=001.ckpt")
    make_run(out, "0000", "finished", 0.9)
    linked = make_run(out, "0001", "failed", best=False, last=False)
    (linked / "checkpoints").symlink_to(outside)  # checkpoints/ itself points outside the sweep
    other = make_run(out, "0002", "failed", best=False)
    (other / "checkpoints" / "best-epoch=003.ckpt").symlink_to(outside / "best-epoch=001.ckpt")
    (out / "runs" / "0003").symlink_to(outside, target_is_directory=True)  # a whole run directory
    (out / "runs" / "0003" / "run.json").write_text(json.dumps({"state": "failed"}))
    (out / "sweep.yaml").write_text(yaml.safe_dump({"name": "s", "method": "grid", "metric": {"name": METRIC},
                                                    "parameters": {"x": {"values": [1]}}}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["prune", str(out), "--keep", "0", "--dry-run"]) == 0
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert "would remove runs/0000/checkpoints/last.ckpt" in capsys.readouterr().out
    assert main(["prune", str(out), "--keep", "0"]) == 0
    assert sorted(p.name for p in outside.iterdir()) == ["best-epoch=001.ckpt", "last.ckpt", "run.json"]
    assert names(other) == ["checkpoints/best-epoch=003.ckpt"]  # the link, left alone; its own last.ckpt gone
    assert "symbolic link or outside" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--keep", "-1"], "argument --keep: '-1' is not an integer at least 0"),
    (["--keep", "1e99"], "argument --keep: '1e99' is not an integer"),
    (["--keep", "two"], "argument --keep: 'two' is not an integer"),
    (["--keep", "99999999999"], "at most 1000000"),
])
def test_bad_keep_is_refused_when_parsed(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        main(["prune", str(tmp_path), *argv])
    assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-2", "1.5", "nan", "10000000", "none"])
def test_bad_keep_checkpoints_of_run_is_refused_when_parsed(capsys, value):
    with pytest.raises(SystemExit) as exit:
        main(["run", "missing.yaml", "--keep-checkpoints", value])
    assert exit.value.code == 2 and "argument --keep_checkpoints/--keep-checkpoints:" in capsys.readouterr().err


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda d: d / "missing", [], "is not a directory"),
    (lambda d: d, [], "is not an offline sweep directory (no sweep.yaml)"),
    (lambda d: d, ["--metric", METRIC, "--goal", "maximize"], "holds no run directories"),
])
def test_a_directory_that_is_not_a_sweep_is_refused_in_one_line(tmp_path, capsys, make, extra, message):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["prune", str(make(tmp_path)), "--keep", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_wandb_agents_run_directories_by_their_history(tmp_path, capsys):
    """A W&B agent's runs share the layout but have no run.json: training.json says finished,
    the history gives the value; a run written to recently is left alone."""
    experiment = tmp_path / "runs" / "demo"
    runs = {}
    for name, values, done in (("a1", [0.6, 0.8], True), ("b2", [0.7, 0.9], True), ("c3", [0.95], False),
                               ("d4", [0.5], True)):
        run = runs[name] = experiment / name
        ckpt(run / "checkpoints" / "best-epoch=001.ckpt")
        ckpt(run / "checkpoints" / "last.ckpt")
        (run / "config.yaml").write_text("model: {}\n")
        (run / "sweep_history.jsonl").write_text("".join(json.dumps({"epoch": i, METRIC: v}) + "\n"
                                                         for i, v in enumerate(values)))
        (run / "training.json").write_text(json.dumps({"epochs": 2, "done": done}))
        if name != "d4":
            for p in run.rglob("*"):
                os.utime(p, (OLD, OLD))
    foreign = experiment / "other"  # another program's folder: a config and checkpoints, none of our run files
    ckpt(foreign / "checkpoints" / "last.ckpt")
    (foreign / "config.yaml").write_text("x: 1\n")
    assert main(["prune", str(tmp_path / "runs"), "--keep", "1", "--metric", METRIC, "--goal", "maximize"]) == 0
    assert names(foreign) == ["checkpoints/last.ckpt"]
    assert names(runs["b2"]) == ["checkpoints/best-epoch=001.ckpt"]
    assert names(runs["a1"]) == names(runs["c3"]) == []  # outside the best 1; ended before training was done
    assert len(names(runs["d4"])) == 2 and "d4: written less than 3600 s ago" in capsys.readouterr().out


def test_a_cv_run_keeps_what_cv_json_names(tmp_path):
    out = tmp_path / "sweep"
    run = make_run(out, "0000", "finished", 0.9, best=False, last=False)
    ckpt(run / "fold_0" / "checkpoints" / "best-epoch=002.ckpt")
    ckpt(run / "fold_0" / "checkpoints" / "last.ckpt")
    ckpt(run / "fold_1" / "checkpoints" / "last.ckpt")  # this fold had no best: cv.json names its last
    (run / "cv.json").write_text(json.dumps({"folds": 2, "checkpoints": [
        "fold_0/checkpoints/best-epoch=002.ckpt", "fold_1/checkpoints/last.ckpt"]}))
    loser = make_run(out, "0001", "finished", 0.1, best=False, last=False)
    ckpt(loser / "fold_0" / "checkpoints" / "best-epoch=002.ckpt")
    sweep_dir_with_study(tmp_path)
    assert main(["prune", str(out), "--keep", "1"]) == 0
    assert names(run) == ["fold_0/checkpoints/best-epoch=002.ckpt", "fold_1/checkpoints/last.ckpt"]
    assert names(loser) == []


FAKE_CLI = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + (ROOT / "tests" / "stand_in_cli.py").read_text()


def test_the_runner_prunes_after_each_run_and_the_disk_stays_bounded(tmp_path, monkeypatch):
    """Four runs of the stand-in program (100 kB checkpoints), --keep-checkpoints 2: afterwards
    only the two best runs' best checkpoints are on the disk, and the sweep directory's bytes
    are at most 2 x one run's keepers + every run's small files."""
    from sweeps.runner import runner as runner_loop

    program = tmp_path / "fake_cli.py"
    program.write_text(FAKE_CLI)
    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sweep = {"program": str(program), "name": "fake", "method": "grid", "metric": {"name": METRIC, "goal": "maximize"},
             "parameters": {"x": {"values": [0.1, 0.6, 0.3, 0.9]}, "ckpt_kb": {"value": 100}},
             "command": ["${env}", "${interpreter}", "${program}", f"--sweep.metric={METRIC}", "${args}"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--quiet", "--keep-checkpoints", "2"]) == 0
    kept = {p.parent.parent.name: p.name for p in out.rglob("*.ckpt")}
    xs = {d.name: json.loads((d / "run.json").read_text())["params"]["x"] for d in (out / "runs").iterdir()}
    assert sorted(xs[r] for r in kept) == [0.6, 0.9] and set(kept.values()) == {"best-epoch=002.ckpt"}
    files = [p for p in out.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    keepers = max(sum(p.stat().st_size for p in (out / "runs" / r).rglob("*.ckpt")) for r in kept)
    small = sum(p.stat().st_size for p in files if p.suffix != ".ckpt")
    assert keepers > 100_000 and total <= 2 * keepers + small


def test_a_runner_started_without_the_flag_keeps_the_sweeps_k(tmp_path, monkeypatch):
    """`--keep-checkpoints all` is the sweep's K; a second runner or a restart without the flag
    must not turn it back to the default 3 (every runner would then delete what the user keeps)."""
    import optuna

    from sweeps.runner import runner as runner_loop
    from sweeps.runner.prune import KEEP_ATTR

    program = tmp_path / "fake_cli.py"
    program.write_text(FAKE_CLI)
    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sweep = {"program": str(program), "name": "fake", "method": "grid", "metric": {"name": METRIC, "goal": "maximize"},
             "parameters": {"x": {"values": [0.1]}},
             "command": ["${env}", "${interpreter}", "${program}", f"--sweep.metric={METRIC}", "${args}"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    for flags, expected in ((["--keep-checkpoints", "all"], None), ([], None), (["--keep-checkpoints", "2"], 2), ([], 2)):
        assert main(["run", str(tmp_path / "s.yaml"), "--out", str(out), "--quiet", *flags]) == 0
        assert optuna.load_study(study_name="fake", storage=storage).user_attrs[KEEP_ATTR] == expected, flags


def _release(run_dir: Path) -> None:
    """An in-process fit keeps its fit.lock (if it took one) for the process's life; a fit's own
    process ends."""
    from rundir import create

    fd = create._LOCKS.pop(Path(run_dir), None)
    if fd is not None:
        os.close(fd)


@pytest.mark.slow  # fit, test and predict: 20-60 s on two busy cores
def test_a_pruned_best_checkpoint_still_tests_and_predicts(fit_args, tmp_path):
    import torch

    from rundir.checkpoints import TRAINING_STATE
    from sweeps.runner.prune import Run, prune_runs
    from training.cli import cli_main

    cli = cli_main(fit_args("configs/demo.yaml", "--trainer.max_epochs=2"))
    run_dir, best = cli.run_dir, Path(cli.checkpoint.best_model_path)
    _release(run_dir)
    before = best.stat().st_size
    pruned, kept = prune_runs(run_dir.parent, [Run(run_dir, "finished", 0.5)], 1, "maximize")
    assert names(run_dir) == [f"checkpoints/{best.name}"] and pruned.stripped == [best]
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert not set(TRAINING_STATE) & set(saved) and "state_dict" in saved and "operating_point" in saved
    assert best.stat().st_size < 0.6 * before  # Adam keeps two tensors per weight
    again = prune_runs(run_dir.parent, [Run(run_dir, "finished", 0.5)], 1, "maximize")[0]
    assert again.stripped == [] and again.freed == 0  # once is enough: not loaded again
    test = cli_main([*fit_args(subcommand="test"), f"--ckpt_path={best}"])
    report = json.loads((test.run_dir / "test_report.json").read_text())
    assert report["threshold"]["value"] == pytest.approx(saved["operating_point"]["threshold"]["value"])
    predict = cli_main([*fit_args(subcommand="predict"), f"--ckpt_path={best}"])
    assert (predict.run_dir / "predictions.csv").read_text().count("\n") > 1


@pytest.mark.slow  # a two-fold cross-validated fit: three processes
def test_a_pruned_cv_run_still_predicts_with_its_fold_ensemble(fit_args, tmp_path):
    from sweeps.runner.prune import Run, prune_runs
    from training.cli import cli_main

    cli = cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--trainer.max_epochs=2"))
    run_dir = cli.run_dir
    _release(run_dir)
    named = json.loads((run_dir / "cv.json").read_text())["checkpoints"]
    pruned, _ = prune_runs(run_dir.parent, [Run(run_dir, "finished", 0.5)], 1, "maximize")
    assert names(run_dir) == sorted(named) and len(pruned.stripped) == 2 and pruned.removed
    predict = cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), f"--cv.run_dir={run_dir}"])
    assert (predict.run_dir / "predictions.csv").read_text().count("\n") > 1


def _disk(out: Path) -> dict:
    """Bytes on disk of a sweep directory: all, checkpoints, and the largest run's checkpoints."""
    files = [p for p in out.rglob("*") if p.is_file() and not p.is_symlink()]
    runs = [sum(p.stat().st_size for p in d.rglob("*.ckpt")) for d in (out / "runs").iterdir()]
    ckpts = sum(p.stat().st_size for p in files if p.suffix == ".ckpt")
    return {"total": sum(p.stat().st_size for p in files), "checkpoints": ckpts, "one_run": max(runs),
            "with_checkpoints": sum(r > 0 for r in runs), "runs": len(runs)}


@pytest.mark.slow  # four real cli.py runs, twice
@pytest.mark.parametrize("keep", ["1", "all"])
def test_a_real_sweeps_disk_stays_within_the_bound(hand_data, tmp_path, monkeypatch, keep):
    """A CPU sweep of 4 real runs (resnet18, 2 epochs): with --keep-checkpoints 1 its bytes stay
    within 1 x one run's keepers + the rest's small files; without pruning they do not."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    constants = {"data.root": str(hand_data), "demo.body_part": "null", "data.image_size": 32, "data.batch_size": 8,
                 "data.num_workers": 0, "trainer.max_epochs": 2, "trainer.limit_train_batches": 2,
                 "trainer.limit_val_batches": 2, "trainer.limit_test_batches": 1, "trainer.enable_progress_bar": False,
                 "eval.bootstrap_resamples": 200, "run.wandb": "disabled"}
    sweep = {"program": "cli.py", "name": "disk", "method": "grid", "metric": {"name": "val/auroc", "goal": "maximize"},
             "parameters": {"model.lr": {"values": [1e-4, 3e-4, 1e-3, 3e-3]}, **{k: {"value": v} for k, v in constants.items()}},
             "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                         "--sweep.metric=val/auroc", "${args}"]}
    (tmp_path / "disk.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "disk.yaml"), "--out", str(out), "--quiet", "--keep-checkpoints", keep]) == 0
    disk = _disk(out)
    print(f"\n--keep-checkpoints {keep}: {json.dumps(disk)}")  # the README's figures
    small = disk["total"] - disk["checkpoints"]
    if keep == "1":
        assert disk["with_checkpoints"] == 1 and disk["total"] <= disk["one_run"] + small
    else:  # what the bound is about: every run keeps last.ckpt and its best with the optimizer state
        assert disk["with_checkpoints"] == 4 and disk["total"] > 3 * disk["one_run"] + small


class Stranger:
    """Anything a weights-only load refuses: unpickling it would run code of the file's choosing."""


def test_stripping_loads_weights_only_and_a_dry_run_writes_nothing(tmp_path, capsys):
    import torch

    out = tmp_path / "sweep"
    plain, odd = make_run(out, "0000", "finished", 0.9, best=False), make_run(out, "0001", "finished", 0.8, best=False)
    state = {"state_dict": {"w": torch.zeros(10)}, "optimizer_states": [{"m": torch.zeros(1000)}], "loops": {}}
    torch.save(state, plain / "checkpoints" / "best-epoch=001.ckpt")
    torch.save({**state, "x": Stranger()}, odd / "checkpoints" / "best-epoch=001.ckpt")
    sweep_dir_with_study(tmp_path)
    sizes = {p: p.stat().st_size for p in out.rglob("*.ckpt")}
    assert main(["prune", str(out), "--keep", "2", "--dry-run"]) == 0
    assert {p: p.stat().st_size for p in out.rglob("*.ckpt")} == sizes
    shown = capsys.readouterr().out
    assert "would strip runs/0000/checkpoints/best-epoch=001.ckpt" in shown and "would free 0.0 MB (6000 bytes)" in shown
    assert main(["prune", str(out), "--keep", "2"]) == 0
    assert "kept with its training state (not loadable as weights only: UnpicklingError)" in capsys.readouterr().out
    assert set(torch.load(plain / "checkpoints" / "best-epoch=001.ckpt")) == {"state_dict"}
    assert (odd / "checkpoints" / "best-epoch=001.ckpt").stat().st_size == sizes[odd / "checkpoints" / "best-epoch=001.ckpt"]
    assert names(plain) == names(odd) == ["checkpoints/best-epoch=001.ckpt"]


def test_continuing_from_a_pruned_checkpoint_is_refused_pointing_to_its_weights(tmp_path):
    """Lightning would fail with a KeyError (a traceback) on `fit --ckpt_path` without optimizer state."""
    import torch

    from rundir.records import check_same_model

    pruned = tmp_path / "best-epoch=001.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"backbone": "resnet18"}}, pruned)
    with pytest.raises(ValueError, match=r"holds weights only .* --model.weights="):
        check_same_model(pruned, {"backbone": "resnet18"})
    torch.save({"state_dict": {}, "optimizer_states": [], "hyper_parameters": {"backbone": "resnet18"}}, pruned)
    check_same_model(pruned, {"backbone": "resnet18"})  # a whole checkpoint continues


def test_runners_pruning_at_once_neither_fail_nor_share_a_temporary_file(tmp_path, monkeypatch):
    """Every runner prunes after its own runs, unlocked: a checkpoint another runner removed
    between the check and the removal is no error, and stripping writes to a name of its own
    (a fixed `.stripped` name let two runners write one file and rename half of it into place)."""
    import torch

    import rundir.checkpoints as checkpoints
    from rundir.checkpoints import Pruned, remove, strip

    gone = tmp_path / "runs" / "0000" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(checkpoints, "inside", lambda path, root: True)  # it was there when checked
    pruned = Pruned()
    remove(gone, tmp_path, pruned, dry_run=False)
    assert pruned.removed == [] and pruned.skipped == []
    monkeypatch.undo()
    best = tmp_path / "runs" / "0001" / "checkpoints" / "best-epoch=001.ckpt"
    best.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(4)}, "optimizer_states": [{"m": torch.zeros(100)}]}, best)
    best.chmod(0o640)
    temporaries = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (temporaries.append(Path(f)), real_save(obj, f)))
    strip(best, tmp_path, Pruned(), dry_run=False)
    assert temporaries and temporaries[0].name != f".{best.name}.stripped" and temporaries[0].parent == best.parent
    assert set(torch.load(best)) == {"state_dict"} and best.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in best.parent.iterdir()) == [best.name]
