"""Every user-facing entry point, given bad input, says what is wrong in one paragraph
(naming the file, key or value and what is allowed), exits non-zero, shows no traceback and
leaves nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, TINY

import cli


def run_cli(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    try:
        code = cli.main()
    except SystemExit as e:  # jsonargparse's own parse errors
        code = e.code
    return code, capsys.readouterr().err


def corrupt_copy(hand_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(hand_data, root)
    victims = sorted((root / "images").iterdir())
    for victim in victims[::3]:  # several, so every split has one
        victim.write_bytes(victim.read_bytes()[:60])  # truncated mid-stream
    return root, victims[0]


CLI_CASES = {
    "missing config file": (["--config", "configs/nope.yaml"], "nope.yaml"),
    "malformed yaml config": (["--config", "{bad_yaml}"], "bad.yaml"),
    "wrong type": (["--model.lr=abc"], "model.lr"),
    "negative lr": (["--model.lr=-1"], "model.lr must be > 0"),
    "fraction out of range": (["--data.val_fraction=1.5"], "data.val_fraction must be in [0, 1)"),
    "dropout out of range": (["--model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    "unknown option": (["--model.lrr=0.1"], "lrr"),
    "unknown choice": (["--model.optimizer=lamb"], "model.optimizer"),
    "missing data root": (["--data.root=/nonexistent/ra_hand"], "python -m datamodules.synthetic"),
    "unknown backbone": (["--model.backbone=resnet51"], "resnet50"),
    "missing weights file": (["--model.weights=/nonexistent/resnet18.pth"], "/nonexistent/resnet18.pth"),
    "unknown class": (["--data.classes=[normal,oa]"], "unknown label(s) ['abnormal']"),
    "bad objective json": (["--sweep.metric=val/objective", "--sweep.objective={bad"], "sweep.objective"),
    "bad condition": (["--sweep.when+=model.momentum"], "CHILD:PARENT=VALUE1|VALUE2"),
    "gpu asked, none there": (["--trainer.accelerator=gpu"], "gpu"),
    # eval.* values are checked when parsed, not after the training (nothing is written)
    "bootstrap seed negative": (["--eval.bootstrap_seed=-1"], "eval.bootstrap_seed"),
    "bootstrap seed too large": (["--eval.bootstrap_seed=18446744073709551616"], "eval.bootstrap_seed"),
    "bootstrap resamples unbounded": (["--eval.bootstrap_resamples=1000000000"], "eval.bootstrap_resamples"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input(case, monkeypatch, capsys, hand_data, tmp_path):
    extra, expected = CLI_CASES[case]
    if case == "gpu asked, none there":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n  lr: 0.1\n")
    extra = [a.replace("{bad_yaml}", str(bad_yaml)) for a in extra]
    args = ["fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}", "--demo.body_part=null",
            f"--run.root={tmp_path / 'runs'}", *TINY, *extra]
    code, err = run_cli(monkeypatch, capsys, args)
    assert code == 2, err
    assert expected in err, err
    assert "Traceback" not in err
    assert not any(p.is_dir() and any(p.iterdir()) for p in (tmp_path / "runs").glob("*/*"))  # nothing half-written


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_mid_data_names_the_file(workers, monkeypatch, capsys, hand_data, tmp_path):
    root, _ = corrupt_copy(hand_data, tmp_path)
    args = ["fit", "--config", "configs/demo.yaml", f"--data.root={root}", "--demo.body_part=null",
            f"--run.root={tmp_path / 'runs'}", *TINY, f"--data.num_workers={workers}",
            "--trainer.limit_train_batches=null", "--trainer.limit_val_batches=null"]
    code, err = run_cli(monkeypatch, capsys, args)
    assert code == 2 and "cannot read image" in err and "images/P" in err, err
    assert "Traceback" not in err


def test_corrupt_images_skipped_and_counted_when_asked(monkeypatch, caplog, hand_data, tmp_path):
    root, _ = corrupt_copy(hand_data, tmp_path)
    args = ["fit", "--config", "configs/demo.yaml", f"--data.root={root}", "--demo.body_part=null",
            f"--run.root={tmp_path / 'runs'}", *TINY, "--data.skip_bad_files=true"]
    monkeypatch.setattr(sys, "argv", ["cli.py", *args])
    assert cli.main() == 0
    assert "Skipped 16 of 48 unreadable image(s)" in caplog.text
    assert "images/P0001_L.png: not a readable" in caplog.text and str(root) not in caplog.text


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (b"\x00\xff\xfe garbage \x00", "manifest"),
        (b"path;label\nimages/a.png;normal\n", "lacks column(s)"),
        (b"path,label\n", "has a header but no rows"),
    ],
)
def test_malformed_manifest(manifest, expected, monkeypatch, capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.csv").write_bytes(manifest)
    code, err = run_cli(monkeypatch, capsys, ["fit", "--config", "configs/demo.yaml",
                                              f"--data.root={tmp_path / 'data'}", "--demo.body_part=null"])
    assert code == 2 and expected in err and "manifest.csv" in err, err


SWEEP_CASES = {
    "run: missing sweep file": (["run", "sweeps/nope.yaml"], "Cannot read sweep file sweeps/nope.yaml"),
    "run: malformed yaml": (["run", "{bad}"], "is not valid YAML"),
    "run: not a sweep": (["run", "configs/demo.yaml"], "lacks `method` and `parameters`"),
    "best: missing dir": (["best", "{missing}"], "missing"),
    "report: missing dir": (["report", "{missing}"], "missing"),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_sweeps_bad_input(case, capsys, tmp_path):
    from sweeps.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [grid\n")
    args = [a.replace("{bad}", str(bad)).replace("{missing}", str(tmp_path / "missing")) for a in SWEEP_CASES[case][0]]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and SWEEP_CASES[case][1] in err and "Traceback" not in err, err


SYNTHETIC_CASES = {
    "count zero": (["--count", "0"], "count"),
    "tiny size": (["--size", "10", "10"], "size"),
    "bad body part": (["--body-part", "knee"], "hand"),
    "non-empty dir": (["--count", "2"], "not empty"),
}


@pytest.mark.parametrize("case", list(SYNTHETIC_CASES))
def test_synthetic_bad_input(case, tmp_path, capsys):
    from datamodules.synthetic import main

    out = tmp_path / "out"
    if case == "non-empty dir":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    args, expected = SYNTHETIC_CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and expected in err and "Traceback" not in err
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_entry_points_as_processes_print_no_traceback(tmp_path):
    """The same through real processes, as a user sees it."""
    cases = [
        [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", "--data.root=/nonexistent", "--demo.body_part=null"],
        [PYTHON, "-m", "sweeps", "run", "sweeps/nope.yaml"],
        [PYTHON, "-m", "datamodules.synthetic", "--out", str(tmp_path / "x"), "--count", "0"],
    ]
    for cmd in cases:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (cmd, done.stderr)
        assert "Traceback" not in done.stderr and "error" in done.stderr.lower(), done.stderr


# ---- predict --cv.run_dir: what a cross-validated run's directory may hold ----------------------


def _cv_run(tmp_path: Path, backbone: str = "resnet18") -> Path:
    """A finished-looking cross-validated run: cv.json and two fold checkpoints holding models
    of configs/demo.yaml's shape (resnet18, two classes) or of `backbone`."""
    import json

    import lightning
    import torch

    from models.classifier import XrayClassifier

    run = tmp_path / "cv_run"
    entries = []
    for fold in range(2):
        model = XrayClassifier(backbone=backbone, num_classes=2, class_names=["normal", "abnormal"])
        path = run / f"fold_{fold}" / "checkpoints" / "best.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                    "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}, path)
        entries.append(f"fold_{fold}/checkpoints/best.ckpt")
    point = {"threshold": {"value": 0.4, "rule": "youden"}, "temperature": 1.0, "temperature_scaling": False}
    (run / "cv.json").write_text(json.dumps({"folds": 2, "metric": "val/auroc", "operating_point": point,
                                             "checkpoints": entries}))
    return run


def _predict(monkeypatch, capsys, hand_data, tmp_path, run: Path) -> tuple[int, str, list[Path]]:
    args = ["predict", "--config", "configs/demo.yaml", f"--data.root={hand_data}", "--demo.body_part=null",
            f"--run.root={tmp_path / 'runs'}", *TINY, f"--cv.run_dir={run}"]
    code, err = run_cli(monkeypatch, capsys, args)
    return code, err, list((tmp_path / "runs").rglob("predictions*.csv"))


def _edit_cv_json(run: Path, edit) -> None:
    import json

    saved = json.loads((run / "cv.json").read_text())
    (run / "cv.json").write_text(json.dumps(edit(saved)))


def test_ensemble_with_a_fold_missing_leaves_no_predictions(monkeypatch, capsys, hand_data, tmp_path):
    run = _cv_run(tmp_path)
    (run / "fold_1" / "checkpoints" / "best.ckpt").unlink()
    code, err, written = _predict(monkeypatch, capsys, hand_data, tmp_path, run)
    assert code == 2 and "fold 1" in err and "Traceback" not in err, err
    assert written == []  # not fold 0's predictions alone, at 0.5, looking like the ensemble's


@pytest.mark.parametrize("entry", ["../other_run/fold_0/checkpoints/best.ckpt", "{abs}", "fold_1/checkpoints/best.ckpt"],
                         ids=["parent", "absolute", "another fold"])
def test_cv_json_may_name_only_the_runs_own_fold_checkpoints(entry, monkeypatch, capsys, hand_data, tmp_path):
    import shutil

    run = _cv_run(tmp_path)
    other = tmp_path / "other_run"
    shutil.copytree(run, other)  # another run's models, loadable
    entry = entry.replace("{abs}", str(other / "fold_0" / "checkpoints" / "best.ckpt"))
    _edit_cv_json(run, lambda saved: {**saved, "checkpoints": [entry, saved["checkpoints"][1]]})
    code, err, written = _predict(monkeypatch, capsys, hand_data, tmp_path, run)
    assert code == 2 and "fold_0/" in err and "Traceback" not in err, err
    assert written == []


@pytest.mark.parametrize("damage", ["list", "no operating point", "operating point a string"])
def test_damaged_cv_json_is_one_line(damage, monkeypatch, capsys, hand_data, tmp_path):
    run = _cv_run(tmp_path)
    edits = {"list": lambda saved: [saved],
             "no operating point": lambda saved: {k: v for k, v in saved.items() if k != "operating_point"},
             "operating point a string": lambda saved: {**saved, "operating_point": "youden"}}
    _edit_cv_json(run, edits[damage])
    code, err, written = _predict(monkeypatch, capsys, hand_data, tmp_path, run)
    assert code == 2 and "cv.json" in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and written == []


def test_checkpoint_of_another_backbone_is_one_paragraph(monkeypatch, capsys, hand_data, tmp_path):
    run = _cv_run(tmp_path, backbone="resnet34")  # the command builds configs/demo.yaml's resnet18
    code, err, written = _predict(monkeypatch, capsys, hand_data, tmp_path, run)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert "model.backbone=resnet34 there, resnet18 here" in err and len(err) < 1000
    assert written == []
