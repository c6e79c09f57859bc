"""Careless and hostile input: files outside the data root, labels that only look alike or that a
spreadsheet would run, and images that decompress to gigabytes. Every hostile file is built here
at a few kilobytes and must be refused quickly and in little memory."""

from __future__ import annotations

import csv
import logging
import os
import struct
import time
import tracemalloc
import unicodedata
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from datamodules.records import DataError, Record, read_manifest, scan_folder
from datamodules.splits import assign_splits, check_labels

PATIENT_FILE = "DOE^JANE_MRN778899.png"  # file names in hospital exports carry patient data


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return path


def _manifest(root: Path, rows: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file next to, not inside, the data root tmp_path/root."""
    return _png(tmp_path / "secret" / PATIENT_FILE)


# ----------------------------------------------------------------------------- outside the root


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlinked file"])
def test_manifest_row_outside_root_is_refused(kind, tmp_path, outside):
    root = tmp_path / "root"
    _png(root / "images" / "a.png")
    given = {"traversal": f"../secret/{PATIENT_FILE}", "absolute": str(outside), "symlinked file": "images/link.png"}
    if kind == "symlinked file":
        (root / "images" / "link.png").symlink_to(outside)
    manifest = _manifest(root, [("images/a.png", "normal"), (given[kind], "abnormal")])
    with pytest.raises(DataError) as err:
        read_manifest(manifest, root)
    message = str(err.value)
    assert str(manifest) in message and f"line 3: {given[kind]}" in message, message
    assert "data.allow_outside_root=true" in message


def test_all_outside_rows_named_in_one_error(tmp_path, outside):
    root = tmp_path / "root"
    _png(root / "images" / "a.png")
    manifest = _manifest(root, [("../secret/x.png", "a"), ("images/a.png", "a"), (str(outside), "b")])
    with pytest.raises(DataError, match=r"2 row\(s\) point outside the data root") as err:
        read_manifest(manifest, root)
    assert "line 2: ../secret/x.png" in str(err.value) and f"line 4: {outside}" in str(err.value)


@pytest.mark.parametrize("kind", ["symlinked file", "symlinked class folder", "symlinked split folder"])
def test_folder_symlink_outside_root_is_refused(kind, tmp_path, outside):
    root = tmp_path / "root"
    if kind == "symlinked split folder":
        for split in ("train", "val"):
            _png(root / split / "normal" / "a.png")
        _png(tmp_path / "elsewhere" / "normal" / PATIENT_FILE)
        (root / "test").symlink_to(tmp_path / "elsewhere")
        entry = "test/"
    else:
        _png(root / "normal" / "a.png")
        if kind == "symlinked file":
            (root / "normal" / "b.png").symlink_to(outside)
            entry = "normal/b.png"
        else:
            (root / "abnormal").symlink_to(outside.parent)
            entry = "abnormal/"
    with pytest.raises(DataError) as err:
        scan_folder(root)
    message = str(err.value)
    assert f"\n  {entry}" in message and "data.allow_outside_root=true" in message, message
    assert PATIENT_FILE not in message  # the symlinked folder is named, not what is in it


def test_symlinks_inside_root_are_allowed(tmp_path):
    root = tmp_path / "root"
    target = _png(root / ".store" / "x.png")  # hidden: not a class folder itself
    _png(root / "normal" / "a.png")
    (root / "normal" / "link.png").symlink_to(target)
    (root / "abnormal").symlink_to(root / ".store")  # class folder linked to a folder in the root
    assert {r.rel for r in scan_folder(root)} == {"normal/a.png", "normal/link.png", "abnormal/x.png"}
    manifest = _manifest(root, [("normal/link.png", "normal"), ("normal/../.store/x.png", "abnormal")])
    assert [r.rel for r in read_manifest(manifest, root)] == ["normal/link.png", ".store/x.png"]


def test_absolute_manifest_row_inside_root_gets_a_relative_rel(tmp_path):
    root = tmp_path / "root"
    path = _png(root / "images" / "a.png")
    records = read_manifest(_manifest(root, [(str(path), "normal")]), root)
    assert records[0].rel == "images/a.png"


def test_outside_root_when_allowed_is_read_under_a_neutral_name(tmp_path, outside):
    from datamodules.datamodule import XrayDataModule

    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "link.png").symlink_to(outside)
    rows = [(f"images/n{i}.png", "normal") for i in range(4)] + [(f"images/a{i}.png", "abnormal") for i in range(2)]
    for rel, _ in rows:
        _png(root / rel)
    rows += [(f"../secret/{PATIENT_FILE}", "abnormal"), (str(outside), "abnormal"), ("images/link.png", "abnormal")]
    _manifest(root, rows)
    with pytest.raises(DataError):
        XrayDataModule(str(root), num_workers=0)  # positional: the option is being renamed
    dm = XrayDataModule(str(root), num_workers=0, allow_outside_root=True)
    rels = sorted(r.rel for r in dm.records if r.rel.startswith("outside-root/"))
    assert rels == ["outside-root/line-10", "outside-root/line-8", "outside-root/line-9"]
    assert not any(os.path.isabs(r.rel) or "DOE" in r.rel or "DOE" in r.patient_id for r in dm.records)

    folders = tmp_path / "folders"
    _png(folders / "abnormal" / "a.png")
    (folders / "normal").symlink_to(outside.parent)
    assert [r.rel for r in scan_folder(folders, allow_outside_root=True)] == ["abnormal/a.png", "outside-root/1"]


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-0.5", "-0.5"),
        ("1e-3", "1e-3"),
        ("+3", "+3"),
        ("-1E+05", "-1E+05"),
        ("normal", "normal"),
        ("images/a.png", "images/a.png"),
        ("", ""),
    ],
)
def test_spreadsheet_safe(cell, expected):
    from datamodules.csvsafe import spreadsheet_safe

    assert spreadsheet_safe(cell) == expected


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_confusion_and_prediction_csv_cells_are_spreadsheet_safe(tmp_path):
    from training.evaluate import PredictionWriter
    from training.writers import write_confusion_csv

    names = ["=1+1", "-1"]
    write_confusion_csv(tmp_path / "confusion.csv", torch.tensor([[3, 0], [1, 2]]), names)
    assert _read_rows(tmp_path / "confusion.csv") == [["true\\pred", "'=1+1", "-1"], ["'=1+1", "3", "0"],
                                                      ["-1", "1", "2"]]

    records = [Record(Path("x"), "@evil.png", "=1+1", "p")]
    data = SimpleNamespace(records_of=lambda split: records)
    trainer = SimpleNamespace(global_rank=0, world_size=1, datamodule=data)
    writer = PredictionWriter(tmp_path, evaluation=SimpleNamespace(point=None))
    writer.write_on_epoch_end(trainer, SimpleNamespace(class_names=names),
                              [{"index": torch.tensor([0]), "logits": torch.log(torch.tensor([[0.9, 0.1]]))}], None)
    rows = _read_rows(tmp_path / "predictions.csv")
    assert rows[0] == ["path", "label", "prob_'=1+1", "prob_-1", "threshold", "predicted"]
    assert rows[1] == ["'@evil.png", "'=1+1", "0.900000", "0.100000", "0.5", "'=1+1"]


def test_label_variants_that_look_the_same_are_one_class(tmp_path):
    root = tmp_path / "root"
    nfc = "Norm\u00e1l"
    variants = [nfc, unicodedata.normalize("NFD", nfc), f" {nfc}\u00a0", f"\u200b{nfc}", f"\ufeff{nfc}", "Nor\u200bm\u00e1l"]
    rows = [(f"images/{i}.png", label) for i, label in enumerate([*variants, "abnormal"])]
    for rel, _ in rows:
        _png(root / rel)
    records = read_manifest(_manifest(root, rows), root)
    assert {r.label for r in records} == {nfc, "abnormal"}

    folders = tmp_path / "folders"
    _png(folders / unicodedata.normalize("NFD", nfc) / "a.png")  # as macOS names folders
    assert [r.label for r in scan_folder(folders)] == [nfc]


def test_labels_differing_only_by_case_warn_and_stay_apart(caplog):
    records = [Record(Path(f"{i}.png"), f"{i}.png", label, str(i)) for i, label in enumerate(["Normal", "normal", "OA"])]
    with caplog.at_level(logging.WARNING, logger="datamodules.splits"):
        classes = check_labels(records, None, "manifest.csv")
    assert classes == ["Normal", "OA", "normal"]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "'Normal' and 'normal'" in warning[0] and "separate classes" in warning[0]


@pytest.mark.parametrize("label", ["\u200b", "\ufeff \u00a0", "\u2060"])
def test_label_empty_after_normalisation_is_refused(label, tmp_path):
    root = tmp_path / "root"
    _png(root / "images" / "a.png")
    _png(root / "images" / "b.png")
    manifest = _manifest(root, [("images/a.png", "normal"), ("images/b.png", label)])
    with pytest.raises(DataError, match="line 3: empty path or label"):
        read_manifest(manifest, root)


LOOK_ALIKE_IDS = [
    ("Jos\u00e9", unicodedata.normalize("NFD", "Jos\u00e9")),  # NFC vs NFD (macOS)
    ("P0002", "P0002\u200b"),  # zero-width space
    ("P 3", "P\u00a03"),  # no-break space
    ("P4", "\ufeffP4"),  # byte order mark pasted from another file
    ("P0005", "\uff30\uff10\uff10\uff10\uff15"),  # full-width, as some input methods type it
    ("P 6", "P \u2003 6"),  # a run of spaces of other widths
]


def _id_manifest(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """path,label,split,patient_id rows, each with a small image."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "patient_id"])
        for row in rows:
            _png(root / row[0])
            writer.writerow(row)
    return root / "manifest.csv"


@pytest.mark.parametrize(("written", "look_alike"), LOOK_ALIKE_IDS)
def test_look_alike_patient_ids_are_one_patient(written, look_alike, tmp_path, caplog):
    # Given splits: the same patient in train and test is the leak error, naming images, not ids.
    root = tmp_path / "given"
    rows = [("a.png", "normal", "train", written), ("b.png", "abnormal", "test", look_alike),
            ("c.png", "normal", "val", "other")]
    with caplog.at_level(logging.WARNING, logger="datamodules.records"):
        records = read_manifest(_id_manifest(root, rows), root)
    with pytest.raises(DataError, match="1 patient.*more than one split") as error:
        assign_splits(records, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert "a.png" in str(error.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lines 2, 3" in warnings[0] and "one patient" in warnings[0]
    for text in [str(error.value), *warnings]:  # patient ids never reach a message
        assert written not in text and look_alike not in text

    # Automatic splits: the two images of that patient always land together, whatever the seed.
    root = tmp_path / "auto"
    rows = [(f"{i}.png", "normal" if i % 2 else "abnormal", "", f"other{i}") for i in range(20)]
    rows += [("x.png", "normal", "", written), ("y.png", "normal", "", look_alike)]
    records = read_manifest(_id_manifest(root, rows), root)
    assert len({r.patient_id for r in records}) == 21  # the bootstrap counts one patient, not two
    for seed in range(10):
        split = {r.rel: r.split for r in assign_splits(records, val_fraction=0.3, test_fraction=0.3, seed=seed)}
        assert split["x.png"] == split["y.png"], seed


def test_patient_ids_that_differ_visibly_stay_apart(tmp_path, caplog):
    root = tmp_path / "root"
    rows = [("a.png", "normal", "train", "P1"), ("b.png", "abnormal", "test", "P-1"),
            ("c.png", "normal", "val", "p1"), ("d.png", "normal", "train", " P1 ")]
    with caplog.at_level(logging.WARNING, logger="datamodules.records"):
        records = read_manifest(_id_manifest(root, rows), root)
    assert [r.patient_id for r in records] == ["P1", "P-1", "p1", "P1"]
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # spaces around: not a variant


# ----------------------------------------------------------------------------- decompression bombs


def _header(rows: int, cols: int, bits: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Secret^Person"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def _meta(ds: Dataset, syntax) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    return meta


def _deflated_dicom(path: Path, ds: Dataset, pixel_bytes: bytes = b"", zeros: int = 0) -> Path:
    """A Deflated Explicit VR Little Endian file whose pixel data is `pixel_bytes` or `zeros`
    MiB of zeros, deflated block by block so that gigabytes cost milliseconds and kilobytes."""
    meta = DicomBytesIO()
    write_file_meta_info(meta, _meta(ds, DeflatedExplicitVRLittleEndian), enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = len(pixel_bytes) or zeros << 20
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length) + pixel_bytes
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = [deflate.compress(head), deflate.flush(zlib.Z_FULL_FLUSH)]
    # After a full flush a block refers only to itself, so copies of it are a valid stream.
    stream += [deflate.compress(bytes(1 << 20)) + deflate.flush(zlib.Z_FULL_FLUSH)] * zeros
    stream.append(deflate.flush())
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + b"".join(stream))
    return path


def _refused_quickly(path: Path, peak_mib: int = 48) -> str:
    """read_image's ImageReadError for `path`, checking it came fast and without a big allocation."""
    from datamodules.readers import ImageReadError, read_image

    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageReadError) as err:
            read_image(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < peak_mib << 20, f"peak {peak >> 20} MiB"
    assert str(path) in str(err.value)
    return str(err.value)


def test_rle_dicom_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    ds = _header(8, 8)
    ds.file_meta = _meta(ds, ExplicitVRLittleEndian)
    ds.compress(RLELossless, np.zeros((8, 8), dtype=np.uint16))
    ds.Rows = ds.Columns = 20000  # declares 800 MB; the file stays tiny
    path = tmp_path / "bomb.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 4096
    assert "declares an image of 20000 x 20000 pixels" in _refused_quickly(path)


def test_deflated_dicom_declaring_a_huge_image_is_refused_before_inflating(tmp_path):
    path = _deflated_dicom(tmp_path / "bomb.dcm", _header(12000, 12000, bits=8), zeros=144)  # 144 MB inside
    assert path.stat().st_size < 1 << 20
    assert "declares an image of 12000 x 12000 pixels" in _refused_quickly(path)


def test_deflate_bomb_declaring_a_small_image_is_refused(tmp_path):
    path = _deflated_dicom(tmp_path / "bomb.dcm", _header(64, 64), zeros=256)  # 256 MiB behind 8 KB declared
    assert path.stat().st_size < 1 << 20
    assert "deflated data set inflates to more than" in _refused_quickly(path)


def test_deflated_dicom_within_limits_is_read(tmp_path):
    from datamodules.readers import read_image

    arr = np.zeros((20, 32), dtype=np.uint16)
    arr[:4, -5:] = 4000
    out = read_image(_deflated_dicom(tmp_path / "ok.dcm", _header(20, 32), pixel_bytes=arr.tobytes()))
    assert out.shape == (20, 32) and out[:4, -5:].min() > 0.9 and out[4:].max() < 0.1

    ds = _header(20, 32)  # and as pydicom itself writes it
    ds.file_meta = _meta(ds, DeflatedExplicitVRLittleEndian)
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "pydicom.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_image(tmp_path / "pydicom.dcm"), out)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height 8-bit gray pixels, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 10_000), (9_000, 8_000)])
def test_png_declaring_a_huge_size_is_refused(tmp_path, width, height):
    # Beyond twice Pillow's limit (its error), beyond it (its warning), and beyond only ours.
    message = _refused_quickly(_png_header_only(tmp_path / "bomb.png", width, height))
    assert "too large to decode safely" in message or f"declares an image of {height} x {width}" in message


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_pillow_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: over it, but under twice it
    assert "too large to decode safely" in _refused_quickly(path)


def test_decoded_size_limits_leave_radiographs_alone():
    from datamodules.readers import MAX_PIXEL_BYTES, MAX_PIXELS

    assert 4300 * 3500 * 4 < MAX_PIXELS and 4300 * 3500 * 2 * 16 < MAX_PIXEL_BYTES
    assert pydicom.__version__ >= "3"  # dicom._dcmread mirrors pydicom 3's read of the file meta
