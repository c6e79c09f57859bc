"""DICOM pixels as a float32 array in [0, 1]: the display pipeline of PS3.3 C.11.

Modality LUT / rescale, then VOI LUT or window (min-max of the data when the file has
neither), then MONOCHROME1 inverted so bone is bright in every image. The Presentation LUT
Shape is ignored on purpose: in DX objects it only restates the photometric interpretation,
and applying both would invert MONOCHROME1 twice. Only image-pixel tags are parsed
(`specific_tags`): patient fields are never read (README, Privacy).
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from datamodules.readers import MAX_PIXEL_BYTES, ImageReadError, check_size, minmax

_INFLATE_HEAD = 2**20  # inflated first from a deflated DICOM: holds the elements before the pixels
_INFLATE_SLACK = 2**24  # room for the other elements of a deflated data set (overlays, icons, private)

# Everything the decoders and the display pipeline need, and nothing that identifies a
# patient. pydicom skips every other element without converting its value.
_DICOM_PIXEL_TAGS = [
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "PixelData", "FloatPixelData", "DoubleFloatPixelData",
]

# Which package a user should install when pydicom has no decoder for the transfer syntax.
_DECODER_HINTS = [
    (pydicom.uid.JPEGTransferSyntaxes, "pylibjpeg pylibjpeg-libjpeg (pillow alone decodes only baseline JPEG)"),
    (pydicom.uid.JPEGLSTransferSyntaxes, "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)"),
    (pydicom.uid.JPEG2000TransferSyntaxes, "pylibjpeg pylibjpeg-openjpeg"),
    (pydicom.uid.RLETransferSyntaxes, "pylibjpeg pylibjpeg-rle (only if pydicom's own RLE decoder failed)"),
]


def read_dicom(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # pydicom warns about odd element values by quoting them; stay silent instead.
            warnings.simplefilter("ignore")
            ds = _dcmread(path)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"not a valid DICOM file ({type(exc).__name__})") from exc
    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM file has no pixel data (is it a report, DICOMDIR or structured report?)")
    if not ds.file_meta.get("TransferSyntaxUID"):  # old ACR-NEMA files: the syntax they were read in
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                          else pydicom.uid.ExplicitVRLittleEndian if little
                                          else pydicom.uid.ExplicitVRBigEndian)
    _check_declared_size(path, ds)  # before the decoder allocates what the header declares
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # index=0: for multi-frame files decode only the first frame.
            arr = pixel_array(ds, index=0)
    except Exception as exc:
        raise ImageReadError(path, _decode_failure(tsyntax, exc)) from exc
    try:
        return _dicom_to_float(arr, ds)
    except Exception as exc:
        raise ImageReadError(path, f"invalid DICOM display attributes ({type(exc).__name__}: {exc})") from exc


def _dcmread(path: Path) -> pydicom.Dataset:
    """pydicom.dcmread, except that a deflated data set (PS3.5 A.5: all after the file meta is one
    raw deflate stream, which pydicom 3 inflates whole with `zlib.decompress`) is inflated here
    with a bound: a first part to read the declared image size (refused if too large), the rest
    only up to what that size needs. The file meta is read as pydicom's `read_partial` does."""
    with open(path, "rb") as f:
        read_preamble(f, True)
        meta = _read_file_meta_info(f)
        if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            f.seek(0)
            return pydicom.dcmread(f, force=True, specific_tags=_DICOM_PIXEL_TAGS)
        zipped = f.read()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(zipped, _INFLATE_HEAD)
    try:
        header = pydicom.dcmread(DicomBytesIO(head), force=True, stop_before_pixels=True,
                                 specific_tags=_DICOM_PIXEL_TAGS)
    except Exception:
        header = pydicom.Dataset()
    # The size elements sort before the pixel data, so they are in `head` unless a huge element
    # precedes them; then only the overall cap applies.
    budget = (_check_declared_size(path, header) if "Rows" in header else MAX_PIXEL_BYTES) + _INFLATE_SLACK
    rest = inflater.decompress(inflater.unconsumed_tail, max(1, budget + 1 - len(head)))
    if len(head) + len(rest) > budget:
        raise ImageReadError(
            path, f"deflated data set inflates to more than {budget >> 20} MiB, more than the image it "
            "declares needs (a decompression bomb?)"
        )
    if not inflater.eof:
        raise ImageReadError(path, "not a valid DICOM file (deflated data set is truncated)")
    ds = pydicom.dcmread(DicomBytesIO(head + rest), force=True, specific_tags=_DICOM_PIXEL_TAGS)
    ds.file_meta = meta
    return ds


def _check_declared_size(path: Path, ds: pydicom.Dataset) -> int:
    """Refuse an image whose header declares more than MAX_PIXELS per frame or MAX_PIXEL_BYTES in
    all; return the declared pixel data size in bytes."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples, frames = int(ds.get("SamplesPerPixel") or 1), max(1, int(ds.get("NumberOfFrames") or 1))
        bits = int(ds.get("BitsAllocated") or 8)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(path, f"invalid DICOM image size attributes ({type(exc).__name__}: {exc})") from exc
    pixels = rows * cols * samples
    nbytes = pixels * frames * max(1, -(-bits // 8))
    shape = f"{rows} x {cols} pixels x {samples} sample(s) x {frames} frame(s) at {bits} bits, {nbytes >> 20} MiB"
    check_size(path, pixels, nbytes, shape)
    return nbytes


def _decode_failure(tsyntax: pydicom.uid.UID, exc: Exception) -> str:
    name = f"{tsyntax.name} ({tsyntax})" if tsyntax.is_transfer_syntax else str(tsyntax)
    detail = " ".join(str(exc).split())  # pydicom lists plugins over several lines; keep one
    reason = f"cannot decode pixel data with transfer syntax {name}: {type(exc).__name__}: {detail}"
    for syntaxes, packages in _DECODER_HINTS:
        if tsyntax in syntaxes:
            return f"{reason}. Install a decoder: pip install {packages}"
    if tsyntax.is_compressed:
        return f"{reason}. This compression may need gdcm: pip install python-gdcm"
    return f"{reason}. The pixel data is probably truncated or corrupt"


def _dicom_to_float(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    if arr.ndim == 3:  # (rows, cols, samples): colour secondary capture, already RGB
        bits = int(ds.get("BitsStored", 8))
        gray = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gray *= 1.0 / (2**bits - 1)
        return gray

    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        raise ValueError("PALETTE COLOR images are not supported; export the X-ray as MONOCHROME2")
    values = apply_modality_lut(arr, ds)
    out, lo, hi = _apply_voi(values, ds)
    out = minmax(out.astype(np.float32, copy=False), lo, hi)  # the decoder's buffer is ours to scale
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        np.subtract(1.0, out, out=out)  # MONOCHROME1: low values are white; make bone bright
    return out


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float, float]:
    """VOI LUT or window applied, and the range it maps onto: from the transform itself, not the
    data, so an image that does not fill the window keeps its contrast instead of being stretched."""
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTDescriptor") and voi_seq[0].get("LUTData") is not None:
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
        n_entries, first_map = int(voi_seq[0].LUTDescriptor[0]) or 2**16, int(voi_seq[0].LUTDescriptor[1])
        lut = apply_voi_lut(np.arange(first_map, first_map + n_entries, dtype=np.int64), ds)
        return apply_voi_lut(values, ds), float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=False)
        return apply_voi_lut(values, ds, prefer_lut=False), float(ends[0]), float(ends[1])
    return values, float(values.min()), float(values.max())
