"""Patient data stays private: no DICOM header value reaches any file a run writes
(W&B offline run, CSV, checkpoints, configs, predictions), even with image logging on."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

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


def test_no_dicom_header_value_reaches_any_run_output(dicom_with_phi, tmp_path):
    from conftest import TINY

    common = ["--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}", "--demo.body_part=null",
              f"--run.root={tmp_path / 'runs'}", *TINY, "--run.wandb=offline", "--run.log_images=true"]
    fit = cli_main(["fit", *common, "--trainer.max_epochs=2"])
    cli_main(["predict", *common, f"--ckpt_path={fit.run_dir / 'checkpoints' / 'last.ckpt'}"])
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "predictions.csv" for p in files)
    assert any("media/images" in str(p) for p in files)  # image logging was on: pixels only
    assert leaked(tmp_path / "runs") == []


def test_logged_paths_are_relative_to_the_data_root(dicom_with_phi, tmp_path):
    from conftest import TINY

    fit = cli_main(["fit", "--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}", "--demo.body_part=null",
                    f"--run.root={tmp_path / 'runs'}", *TINY, "--run.test_after_fit=false"])
    pred = cli_main(["predict", "--config", "configs/demo.yaml", f"--data.root={dicom_with_phi}",
                     "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", *TINY,
                     f"--ckpt_path={fit.run_dir / 'checkpoints' / 'last.ckpt'}"])
    text = (pred.run_dir / "predictions.csv").read_text()
    assert "images/" in text and str(dicom_with_phi) not in text
