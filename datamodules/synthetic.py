"""The demo data set: phantoms (phantoms.py) of whole patients written as files with a manifest.

    python -m datamodules.synthetic --out data/demo_hand --body-part hand --count 400

Pixels depend only on (seed, patient, side): same seed, same data set, whatever the order or
process (README, Your data).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from datamodules.phantoms import BODY_PARTS, BodyPart, render_phantom
from datamodules.records import DataError

Format = Literal["png16", "png8", "dicom"]
OUTPUT_FORMATS: tuple[str, ...] = get_args(Format)
PROVENANCE = "synthetic.json"  # in the data set: the settings it was made with


def _assign_patients(count: int, abnormal_fraction: float, rng: np.random.Generator) -> list[tuple[int, bool]]:
    """(images, abnormal) per patient of 1 or 2 images: abnormal patients are picked until their
    images are the requested fraction; with 0 < fraction < 1 and count >= 2 both classes appear."""
    sizes: list[int] = []
    while sum(sizes) < count:
        sizes.append(1 if count - sum(sizes) == 1 or rng.random() < 0.3 else 2)
    target = round(abnormal_fraction * count)
    if 0 < abnormal_fraction < 1 and count >= 2:
        target = min(max(target, 1), count - 1)
    abnormal = [False] * len(sizes)
    have = 0
    for i in rng.permutation(len(sizes)):
        if have + sizes[i] <= target:
            abnormal[i], have = True, have + sizes[i]
    if have < target:  # only pairs were left: split one so the fraction is met exactly
        i = next(i for i, ab in enumerate(abnormal) if not ab and sizes[i] == 2)
        sizes[i : i + 1], abnormal[i : i + 1] = [1, 1], [True, False]
    return list(zip(sizes, abnormal, strict=True))


def _write(path: Path, img: np.ndarray, *, fmt: str, patient_id: str, body_part: str, side: str,
           uid_seed: list) -> None:
    if fmt == "png8":
        Image.fromarray(np.rint(img * 255).astype(np.uint8)).save(path, compress_level=1)
        return
    stored = np.rint(img * 65535).astype(np.uint16)
    if fmt == "png16":
        Image.fromarray(stored).save(path, compress_level=1)  # mode I;16, full depth
        return
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    def uid(kind: str) -> str:  # deterministic: same seed, byte-identical files
        return generate_uid(entropy_srcs=[*map(str, uid_seed), kind])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(f"study{patient_id}"), uid("series")
    # Only synthetic placeholders: this file describes a phantom, not a person.
    ds.PatientName, ds.PatientID = "Synthetic^Phantom", patient_id
    ds.Modality, ds.PresentationIntentType = "DX", "FOR PRESENTATION"
    ds.BodyPartExamined, ds.ImageLaterality = body_part.upper(), side
    ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
    # A real rescale and a full-range window: read back, the pixels equal the png16 ones.
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "US"
    ds.WindowCenter, ds.WindowWidth = 32768 - 1024, 65536
    ds.save_as(path, enforce_file_format=True)


def generate(
    out: str | os.PathLike, *, body_part: BodyPart = "hand", count: int = 200, size: tuple[int, int] = (256, 256),
    fmt: Format = "png16", seed: int = 0, abnormal_fraction: float = 0.3, severity: float = 1.0,
) -> Path:
    """Write `count` phantoms under `out`/images and `out`/manifest.csv; return the manifest path.

    `severity` scales the disease signs (1.0: subtle, a few CPU epochs at 128 px reach about
    0.7 AUROC; 2.0: plain enough for a one-minute demo). Built in a temporary sibling folder and
    renamed into place: a killed run leaves nothing half-written, racing processes (DDP ranks) end
    with one complete copy. A folder holding other data raises DataError (`check_made_with`).
    """
    out = Path(out)
    if body_part not in BODY_PARTS:
        raise ValueError(f"body_part must be one of {BODY_PARTS}, got {body_part!r}")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"fmt must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    if not 0.0 < severity <= 3.0:
        raise ValueError(f"severity must be in (0, 3], got {severity}")
    if count < 1 or not 0.0 <= abnormal_fraction <= 1.0 or min(size) < 32:
        raise ValueError(f"need count >= 1, 0 <= abnormal_fraction <= 1 and size >= 32 px; got count={count}, "
                         f"abnormal_fraction={abnormal_fraction}, size={tuple(size)}")
    manifest = out / "manifest.csv"
    settings = dict(body_part=body_part, count=count, size=list(size), fmt=fmt, seed=seed,
                    abnormal_fraction=abnormal_fraction, severity=severity)
    if out.is_dir() and any(out.iterdir()):  # made before, by another process, or someone else's
        check_made_with(out, settings)
        return manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        patients = _assign_patients(count, abnormal_fraction, np.random.default_rng([seed, 0]))
        width = max(4, len(str(len(patients))))
        rows = [("path", "label", "patient_id")]
        for p, (n_images, abnormal) in enumerate(patients, start=1):
            patient_id = f"P{p:0{width}d}"
            sides = ["L", "R"]
            if n_images == 1:
                sides = [str(np.random.default_rng([seed, 1, p]).choice(sides))]
            for side in sides:
                img = render_phantom(
                    body_part=body_part, abnormal=abnormal, size=tuple(size), mirror=side == "R",
                    severity=severity, patient_rng=np.random.default_rng([seed, 2, p]),  # same for both sides
                    image_rng=np.random.default_rng([seed, 3, p, ord(side)]),
                )
                rel = f"images/{patient_id}_{side}{'.dcm' if fmt == 'dicom' else '.png'}"
                _write(tmp / rel, img, fmt=fmt, patient_id=patient_id, body_part=body_part, side=side,
                       uid_seed=[seed, body_part, patient_id, side])
                rows.append((rel, "abnormal" if abnormal else "normal", patient_id))
        with open(tmp / "manifest.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        (tmp / PROVENANCE).write_text(json.dumps(settings, indent=1) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the data set is not secret
        try:
            os.replace(tmp, out)  # POSIX rename: atomic, and replaces an empty directory
        except OSError as exc:
            if not manifest.exists():  # else another process (a DDP rank) finished first: use its copy
                raise DataError(f"could not move the new data set into {out}: {exc}") from exc
            check_made_with(out, settings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def check_made_with(out: Path, settings: dict) -> None:
    """Refuse a non-empty folder that does not hold the data set `settings` make, naming its
    PROVENANCE file and what differs. Nothing is written over: it may be someone's own data."""
    elsewhere = "generate the data set into an empty or new folder"
    if not (out / "manifest.csv").is_file():
        raise DataError(f"{out} is not empty and holds no manifest.csv: not a data set made by this "
                        f"generator; {elsewhere}")
    try:
        made = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError) as e:
        made = f"{type(e).__name__}: {e}"
    if not isinstance(made, dict):
        raise DataError(f"{out / PROVENANCE} is missing or damaged ({made}): {out} holds a data set this "
                        f"generator did not make, or a damaged one; {elsewhere}")
    changed = [f"{k} {made.get(k)!r} there, {v!r} asked" for k, v in settings.items() if made.get(k) != v]
    if changed:
        raise DataError(f"{out / PROVENANCE}: {out} holds a synthetic data set made with other settings "
                        f"({'; '.join(changed)}); delete {out} to make it again there, or {elsewhere}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="new or empty directory for images/ and manifest.csv")
    parser.add_argument("--body-part", choices=BODY_PARTS, default="hand")
    parser.add_argument("--count", type=int, default=200, help="number of images (patients have 1 or 2)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--format", dest="fmt", choices=OUTPUT_FORMATS, default="png16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--abnormal-fraction", type=float, default=0.3)
    parser.add_argument("--severity", type=float, default=1.0, help="scale of the disease signs (0, 3]")
    args = parser.parse_args(argv)
    try:
        manifest = generate(**vars(args))  # the options' dests are generate's arguments
    except ValueError as exc:  # DataError too
        parser.error(str(exc))
    print(f"synthetic {args.body_part} data set: {manifest}")


if __name__ == "__main__":
    main()
