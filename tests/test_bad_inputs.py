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
