"""Patient data stays private: no DICOM header value reaches any file a run writes (W&B offline
run, CSV, checkpoints, configs, predictions, and W&B's debug logs outside the run directory),
even with image logging on; images are logged only when asked, at most eight."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import PYTHON, ROOT, TINY
from PIL import Image

from cli import cli_main

PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "MRN4711",
    "PatientBirthDate": "19450101",
    "AccessionNumber": "ACC998877",
    "InstitutionName": "St Example Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20240229",
}


@pytest.fixture(scope="module")
def dicom_with_phi(tmp_path_factory) -> Path:
    from datamodules.synthetic import generate

    root = tmp_path_factory.mktemp("phi") / "hand"
    generate(root, body_part="hand", count=24, size=(64, 64), fmt="dicom", seed=2)
    for path in (root / "images").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return root


def leaked(directory: Path) -> list[str]:
    found = []
    needles = {v: v.encode() for v in PHI.values()} | {v.replace("^", " "): v.replace("^", " ").encode()
                                                       for v in PHI.values()}
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(directory)}: {text}" for text, raw in needles.items() if raw in data]
    return found


def test_phi_fixture_really_holds_phi(dicom_with_phi):
    ds = pydicom.dcmread(next((dicom_with_phi / "images").glob("*.dcm")))
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "MRN4711"
    assert len(leaked(dicom_with_phi)) >= len(PHI)  # the detector finds PHI where it is


def _private_env(tmp_path: Path) -> dict[str, str]:
    """Every place W&B (and anything else) writes, inside tmp_path: the run directories, WANDB_DIR,
    W&B's cache (wandb-core's debug logs go to <cache>/logs), config and data dirs, HOME, temp."""
    env = dict(os.environ)
    for name, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_CACHE_DIR", "wandb-cache"),
                      ("WANDB_CONFIG_DIR", "wandb-config"), ("WANDB_DATA_DIR", "wandb-data"),
                      ("WANDB_ARTIFACT_DIR", "wandb-artifacts"), ("HOME", "home"),
                      ("XDG_CACHE_HOME", "home/.cache"), ("XDG_CONFIG_HOME", "home/.config"), ("TMPDIR", "tmp")):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(tmp_path / sub)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", CUDA_VISIBLE_DEVICES="")
    return env


def _cli(env: dict, *args: str) -> None:
    done = subprocess.run([PYTHON, "cli.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow  # ~40 s: fit, test and predict as processes
def test_no_dicom_header_value_reaches_any_run_output(dicom_with_phi, tmp_path):
    """Fit (images logged) and predict as separate processes, with every directory they may write
    to inside tmp_path, then every byte under tmp_path is searched: run directories, W&B's
    offline run, and what W&B writes outside the run directory (its debug logs)."""
    env = _private_env(tmp_path)
    common = ["--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}", "--demo.body_part=null",
              f"--run.root={tmp_path / 'runs'}", *TINY, "--run.wandb=offline", "--run.log_images=true",
              "--run.name=phi"]
    _cli(env, "fit", *common, "--trainer.max_epochs=2")
    _cli(env, "predict", *common, f"--ckpt_path={tmp_path / 'runs' / 'demo' / 'phi' / 'checkpoints' / 'last.ckpt'}")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = [p.name for p in files]
    assert any(p.suffix == ".wandb" for p in files) and "predictions.csv" in names
    assert any("media/images" in str(p) for p in files)  # image logging was on: pixels only
    # the scan reaches W&B's own logs, inside and outside the run directory
    assert "debug.log" in names and "debug-internal.log" in names
    # W&B's core service log: core-debug-<time>.log, or debug-core.log in a run's logs (by version)
    assert any(n.startswith("core-debug-") or n == "debug-core.log" for n in names), sorted(set(names))
    assert not any((tmp_path / "runs") in p.parents for p in files if p.name.startswith("core-debug-"))
    assert leaked(tmp_path) == []


def _logged_images(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/files/media/images/**/*.png"))


def test_images_are_not_logged_by_default(dicom_with_phi, tmp_path):
    from wandb_records import history, run_file

    fit = cli_main(["fit", "--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}", "--demo.body_part=null",
                    f"--run.root={tmp_path / 'runs'}", *TINY, "--run.wandb=offline", "--run.test_after_fit=false"])
    assert not any(key.startswith("val/examples") for row in history(run_file(fit.run_dir)) for key in row)
    assert _logged_images(fit.run_dir) == [] and not list(tmp_path.rglob("media/images"))


def test_at_most_eight_images_are_logged_when_on(dicom_with_phi, tmp_path):
    from wandb_records import history, run_file

    # a validation batch of more than eight images, over two epochs
    fit = cli_main(["fit", "--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}", "--demo.body_part=null",
                    f"--run.root={tmp_path / 'runs'}", *TINY, "--run.wandb=offline", "--run.log_images=true",
                    "--data.val_fraction=0.5", "--data.batch_size=16", "--trainer.max_epochs=2",
                    "--run.test_after_fit=false"])
    assert len(fit.datamodule.split_records["val"]) > 8  # the cap is what limits them
    rows = [row for row in history(run_file(fit.run_dir)) if any(k.startswith("val/examples") for k in row)]
    assert len(rows) == 1 and rows[0]["val/examples.count"] == 8
    assert set(rows[0]["val/examples.captions"]) <= {"normal", "abnormal"}  # class names, nothing else
    images = _logged_images(fit.run_dir)
    assert len(images) == 8  # W&B names the files by content: eight different images
    assert all(np.asarray(Image.open(p)).std() > 10 for p in images)  # radiographs, not blank frames


def test_logged_paths_are_relative_to_the_data_root(dicom_with_phi, tmp_path):
    fit = cli_main(["fit", "--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}", "--demo.body_part=null",
                    f"--run.root={tmp_path / 'runs'}", *TINY, "--run.test_after_fit=false"])
    pred = cli_main(["predict", "--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}",
                     "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", *TINY,
                     f"--ckpt_path={fit.run_dir / 'checkpoints' / 'last.ckpt'}"])
    text = (pred.run_dir / "predictions.csv").read_text()
    assert "images/" in text and str(dicom_with_phi) not in text
