"""The demo-data generator: manifest contract, determinism, formats, atomicity, the disease signal."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from datamodules.phantoms import render_phantom
from datamodules.readers import read_image
from datamodules.records import DataError
from datamodules.synthetic import PROVENANCE, generate

ROOT = Path(__file__).resolve().parents[1]
SMALL = (64, 64)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("body_part", ["hand", "foot"])
def test_manifest_counts_labels_and_patients(tmp_path: Path, body_part: str) -> None:
    manifest = generate(tmp_path / "ds", body_part=body_part, count=41, size=SMALL, abnormal_fraction=0.3)
    assert manifest == tmp_path / "ds" / "manifest.csv"
    with open(manifest) as f:
        assert f.readline().strip() == "path,label,patient_id"
    rows = _rows(manifest)
    assert len(rows) == 41
    assert all((manifest.parent / r["path"]).is_file() and not Path(r["path"]).is_absolute() for r in rows)
    assert len({r["path"] for r in rows}) == 41
    labels = [r["label"] for r in rows]
    assert set(labels) == {"normal", "abnormal"}
    assert abs(labels.count("abnormal") / 41 - 0.3) <= 0.03
    by_patient: dict[str, set[str]] = defaultdict(set)
    sizes: dict[str, int] = defaultdict(int)
    for r in rows:
        by_patient[r["patient_id"]].add(r["label"])
        sizes[r["patient_id"]] += 1
    assert all(len(v) == 1 for v in by_patient.values())  # one label per patient
    assert set(sizes.values()) <= {1, 2} and 2 in sizes.values()
    assert all(p.startswith("P") and p[1:].isdigit() for p in sizes)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_single_class_on_request(tmp_path: Path, fraction: float) -> None:
    rows = _rows(generate(tmp_path / "ds", count=5, size=SMALL, abnormal_fraction=fraction))
    assert {r["label"] for r in rows} == {"abnormal" if fraction else "normal"}


def test_same_seed_same_pixels_other_seed_differs(tmp_path: Path) -> None:
    def pixels(name: str, seed: int) -> list[np.ndarray]:
        manifest = generate(tmp_path / name, count=4, size=SMALL, seed=seed)
        return [read_image(manifest.parent / r["path"]) for r in _rows(manifest)]

    a, b, c = pixels("a", 3), pixels("b", 3), pixels("c", 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("fmt", ["png16", "png8", "dicom"])
def test_every_format_reads_back(tmp_path: Path, fmt: str) -> None:
    manifest = generate(tmp_path / fmt, count=3, size=(48, 80), fmt=fmt, seed=1)
    reference = generate(tmp_path / "ref", count=3, size=(48, 80), fmt="png16", seed=1)
    for row, ref in zip(_rows(manifest), _rows(reference), strict=True):
        img = read_image(manifest.parent / row["path"])
        assert img.shape == (48, 80) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01
        tolerance = 1 / 255 if fmt == "png8" else 1e-6  # DICOM window/rescale is exact
        np.testing.assert_allclose(img, read_image(reference.parent / ref["path"]), atol=tolerance)


def test_dicom_has_only_synthetic_patient_fields(tmp_path: Path) -> None:
    import pydicom

    manifest = generate(tmp_path / "ds", count=2, size=SMALL, fmt="dicom")
    row = _rows(manifest)[0]
    ds = pydicom.dcmread(manifest.parent / row["path"])
    assert ds.PatientID == row["patient_id"] and str(ds.PatientName) == "Synthetic^Phantom"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
    assert ds.SOPClassUID == pydicom.uid.DigitalXRayImageStorageForPresentation
    assert "PatientBirthDate" not in ds and "InstitutionName" not in ds


@pytest.mark.parametrize("body_part", ["hand", "foot"])
def test_abnormal_differs_from_normal_in_the_joints(body_part: str) -> None:
    """Same patient, pose, exposure and noise with and without disease, 20 pairs.

    The difference must be there in (nearly) every pair, add bone (osteophytes and
    sclerosis are dense) and lie in the digits, not in the carpus/tarsus or forearm
    at the bottom of the image, where the simulated disease never goes.
    """
    added, outside = [], []
    for i in range(20):
        pair = [
            render_phantom(body_part=body_part, abnormal=ab, size=(128, 128),
                           patient_rng=np.random.default_rng([7, i]), image_rng=np.random.default_rng([8, i]))
            for ab in (False, True)
        ]
        diff = pair[1].astype(np.float64) - pair[0]
        added.append(diff.sum())
        outside.append(np.abs(diff[-28:]).sum() / max(np.abs(diff).sum(), 1e-9))
    assert np.mean(np.array(added) > 0) >= 0.8
    assert np.median(outside) < 0.05


def test_normals_vary_too(tmp_path: Path) -> None:
    """Normals are not one template: joint widths and anatomy vary between patients."""
    a, b = (render_phantom(body_part="hand", abnormal=False, size=SMALL, patient_rng=np.random.default_rng(p),
                           image_rng=np.random.default_rng(0)) for p in (1, 2))
    assert np.abs(a - b).mean() > 0.005


def test_atomic_output_and_existing_data_set_kept(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()  # an empty directory is fine
    manifest = generate(out, count=3, size=SMALL)
    stamp = manifest.stat().st_mtime_ns
    assert generate(out, count=3, size=SMALL) == manifest  # already there: kept, not rebuilt
    assert manifest.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary directories left
    assert len(list((out / "images").iterdir())) == 3
    with pytest.raises(DataError, match=r"synthetic\.json: .*count 3 there, 4 asked.*delete .*ds"):
        generate(out, count=4, size=SMALL)  # same directory, other settings: say so, don't reuse


@pytest.mark.parametrize("record", [None, "{not json", "[1, 2]"])
def test_a_manifest_without_its_settings_is_not_taken_for_the_data_set(tmp_path: Path, record) -> None:
    """Someone's own data set, or a damaged one: refused naming the settings file, not reused."""
    out = tmp_path / "ds"
    generate(out, count=3, size=SMALL)
    (out / PROVENANCE).unlink()
    if record is not None:
        (out / PROVENANCE).write_text(record)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(DataError, match=r"(?s)ds/synthetic\.json is missing or damaged.*did not make.*empty or new folder") as e:
        generate(out, count=3, size=SMALL)
    assert "delete" not in str(e.value)  # it may be someone's own data
    assert sorted(p.name for p in out.rglob("*")) == before


def test_refuses_non_empty_directory_without_manifest(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("my own files")
    with pytest.raises(DataError, match=r"ds is not empty and holds no manifest\.csv") as e:
        generate(tmp_path / "ds", count=2, size=SMALL)
    assert "delete" not in str(e.value)  # someone's own files: never advise deleting them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize(
    "kwargs", [dict(body_part="knee"), dict(fmt="tiff"), dict(count=0), dict(abnormal_fraction=1.5)]
)
def test_bad_arguments_name_the_allowed_values(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate(tmp_path / "ds", size=SMALL, **kwargs)


def test_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "datamodules.synthetic", "--out", str(tmp_path / "ds"), "--body-part", "foot",
           "--count", "5", "--size", "40", "56", "--format", "png8", "--seed", "2", "--abnormal-fraction", "0.4"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "ds" / "manifest.csv")
    assert len(rows) == 5 and [r["label"] for r in rows].count("abnormal") == 2
    assert read_image(tmp_path / "ds" / rows[0]["path"]).shape == (40, 56)

    bad = subprocess.run(
        [*cmd[:5], "--body-part", "knee"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "hand" in bad.stderr


def test_a_shape_above_or_left_of_the_image_draws_nothing() -> None:
    """A box that ends at a negative pixel index gives empty slices: the slice -k would read rows
    from the image's far side (and the shape's coordinates would not fit them)."""
    from datamodules.phantoms import _Canvas

    canvas = _Canvas((32, 24), origin=np.zeros(2), scale=1.0, rot=0.0, mirror=False)
    canvas.blob((-20.0, 10.0), 3.0, 3.0)
    canvas.blob((10.0, -20.0), 3.0, 3.0, solid=True)
    canvas.bone_capsule((-30.0, -30.0), (-20.0, -20.0), 2.0)
    assert not canvas.bone.any() and not canvas.tissue.any()
