"""read_image: depth, orientation, DICOM display pipeline and actionable errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from datamodules.readers import FORMATS, ImageReadError, decoder_modules, is_dicom, read_image


def _write_dicom(
    path: Path,
    arr: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    rle: bool = False,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Secret^Person"
    ds.PatientID = "SECRET-ID-123"
    frames = arr.shape[0] if arr.ndim == 3 else 1
    ds.Rows, ds.Columns = arr.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    arr = np.ascontiguousarray(arr, dtype=np.uint16)
    if rle:
        ds.compress(RLELossless, arr)
    else:
        ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _marker_image(dtype: type, high: int) -> np.ndarray:
    """Non-square, with a bright marker in the top-right corner only."""
    arr = np.zeros((20, 32), dtype=dtype)
    arr[:4, -5:] = high
    return arr


def _assert_marker(out: np.ndarray) -> None:
    assert out.shape == (20, 32) and out.dtype == np.float32
    assert out[:4, -5:].min() > 0.9 and out[4:, :].max() < 0.1 and out[:, :-5].max() < 0.1


# ----------------------------------------------------------------------------- PNG / JPEG


def test_png16_keeps_full_depth_and_orientation(tmp_path: Path) -> None:
    Image.fromarray(_marker_image(np.uint16, 65535)).save(tmp_path / "marker.png")
    _assert_marker(read_image(tmp_path / "marker.png"))

    steps = np.array([[30000, 30001, 30002, 65535]], dtype=np.uint16)  # lost if read via 8 bits
    Image.fromarray(steps).save(tmp_path / "steps.png")
    out = read_image(tmp_path / "steps.png")
    assert len(np.unique(out)) == 4
    np.testing.assert_allclose(out[0] * 65535, steps[0], atol=0.01)


def test_png8_orientation(tmp_path: Path) -> None:
    Image.fromarray(_marker_image(np.uint8, 255)).save(tmp_path / "x.png")
    _assert_marker(read_image(str(tmp_path / "x.png")))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_colour_png_becomes_luminance(tmp_path: Path, mode: str) -> None:
    Image.fromarray(_marker_image(np.uint8, 255)).convert(mode).save(tmp_path / "x.png")
    _assert_marker(read_image(tmp_path / "x.png"))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg(tmp_path: Path, mode: str) -> None:
    Image.fromarray(_marker_image(np.uint8, 255)).convert(mode).save(tmp_path / "x.jpg", quality=95)
    out = read_image(tmp_path / "x.jpg")
    assert out.shape == (20, 32)
    assert out[:4, -5:].mean() > 0.8 and out[8:, :20].mean() < 0.1


def test_constant_image_is_zeros(tmp_path: Path) -> None:
    _write_dicom(tmp_path / "flat.dcm", np.full((8, 8), 700))
    out = read_image(tmp_path / "flat.dcm")
    assert out.shape == (8, 8) and not out.any()


# ----------------------------------------------------------------------------- DICOM


def test_dicom_minmax_and_orientation(tmp_path: Path) -> None:
    arr = _marker_image(np.uint16, 4000) + 1000
    _assert_marker(read_image(_write_dicom(tmp_path / "x.dcm", arr)))


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    # MONOCHROME1: the marker has the LOWEST value, which means white.
    arr = 4000 - _marker_image(np.uint16, 4000)
    _assert_marker(read_image(_write_dicom(tmp_path / "x.dcm", arr, photometric="MONOCHROME1")))


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    # Stored 0..200 -> rescaled -1000..1000 (slope 10, intercept -1000).
    # Window centre 0 / width 1000 spans rescaled -500..500, i.e. stored 50..150.
    arr = np.array([[0, 50, 100, 150, 200]], dtype=np.uint16)
    out = read_image(
        _write_dicom(tmp_path / "x.dcm", arr, slope=10.0, intercept=-1000.0, window=(0.0, 1000.0))
    )
    np.testing.assert_allclose(out[0], [0.0, 0.0, 0.5, 1.0, 1.0], atol=2e-3)


def test_dicom_window_without_rescale_keeps_its_contrast(tmp_path: Path) -> None:
    # Data fill only the lower half of the window: not stretched to [0, 1].
    arr = np.array([[1000, 1500, 2000]], dtype=np.uint16)
    out = read_image(_write_dicom(tmp_path / "x.dcm", arr, window=(2000.0, 2000.0)))
    np.testing.assert_allclose(out[0], [0.0, 0.25, 0.5], atol=2e-3)


def test_dicom_rescale_alone_uses_minmax(tmp_path: Path) -> None:
    arr = np.array([[10, 20, 30]], dtype=np.uint16)
    out = read_image(_write_dicom(tmp_path / "x.dcm", arr, slope=2.0, intercept=-5.0))
    np.testing.assert_allclose(out[0], [0.0, 0.5, 1.0], atol=1e-6)


def test_dicom_rle_lossless(tmp_path: Path) -> None:
    arr = _marker_image(np.uint16, 3000) + 100
    path = _write_dicom(tmp_path / "x.dcm", arr, rle=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
    _assert_marker(read_image(path))


def test_dicom_multiframe_takes_first_frame(tmp_path: Path) -> None:
    first = _marker_image(np.uint16, 3000)
    stack = np.stack([first, 3000 - first])
    _assert_marker(read_image(_write_dicom(tmp_path / "x.dcm", stack)))


def test_dicom_without_extension_detected_by_magic(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "IM000001", _marker_image(np.uint16, 3000))
    assert is_dicom(path)
    _assert_marker(read_image(path))


def test_dicom_jpeg_without_decoder_names_syntax_and_package(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "x.dcm", _marker_image(np.uint16, 3000))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLossless  # claim JPEG, keep raw bytes
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"x\.dcm.*JPEG Lossless.*pip install"):
        read_image(path)


def test_dicom_errors_never_mention_patient(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "x.dcm", _marker_image(np.uint16, 3000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])  # truncate the pixel data
    with pytest.raises(ImageReadError, match="x.dcm") as info:
        read_image(path)
    assert "SECRET" not in str(info.value) and "Secret" not in str(info.value)


# ----------------------------------------------------------------------------- bad input


def _truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("empty.png", lambda p: p.write_bytes(b"")),
        ("truncated.png", _truncated_png),
        ("garbage.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)),
        ("notes.jpg", lambda p: p.write_text("this is a text file, not an image")),
        ("corrupt.dcm", lambda p: p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x13\x37" * 20)),
        ("empty.dcm", lambda p: p.write_bytes(b"")),
    ],
)
def test_bad_files_raise_image_read_error_naming_the_file(tmp_path: Path, name: str, make) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageReadError, match=name.replace(".", r"\.")) as info:
        read_image(path)
    assert isinstance(info.value, ValueError)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_error_survives_pickling_for_dataloader_workers(tmp_path: Path) -> None:
    err = pickle.loads(pickle.dumps(ImageReadError(tmp_path / "a.png", "broken")))
    assert err.path == tmp_path / "a.png" and err.reason == "broken" and "a.png" in str(err)


def test_image_suffixes() -> None:
    assert set(FORMATS) == {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def test_a_new_format_is_one_entry_of_formats(tmp_path: Path, monkeypatch) -> None:
    """What the README promises a newcomer: the entry alone makes folders, the messages and the
    preprocessing cache's key know the format (a stand-in decoder: numpy's own load)."""
    from datamodules.datamodule import XrayDataModule
    from datamodules.records import DataError, scan_folder

    monkeypatch.setitem(FORMATS, ".npy", "numpy:load")
    with pytest.raises(DataError, match=r"\.npy"):  # an empty root lists the formats it looks for
        XrayDataModule(root=str(tmp_path))
    for i, label in enumerate(["normal", "abnormal"]):
        (tmp_path / label).mkdir()
        np.save(tmp_path / label / f"{i}.npy", np.full((6, 4), 0.25 * (i + 1)))
    assert [r.label for r in scan_folder(tmp_path)] == ["abnormal", "normal"]
    assert read_image(tmp_path / "normal" / "0.npy").tolist() == np.full((6, 4), 0.25).tolist()
    assert "numpy" in decoder_modules()  # the cache rebuilds when the decoder's source changes
