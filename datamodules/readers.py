"""The one implementation of reading an X-ray image into a float32 array in [0, 1], shaped
(rows, cols) exactly as stored: PIL and pydicom are both row-major, so nothing here transposes.

A format is one entry of `FORMATS`: file suffix -> the decoder, named by import path (loaded on
first use, so a decoder's module may import this one); folder scanning, the error messages and
the cache key follow from it (README, Architecture). Decompression bombs (a 12.5 MB RLE DICOM
can declare 20000 x 20000; deflate reaches ~1000:1): the size a file declares is checked against
MAX_PIXELS and MAX_PIXEL_BYTES before decoding, and Pillow's bomb warning is an error.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# Decompression-bomb limits on what a file declares. The largest radiographs are about
# 4300 x 3500 pixels of one 16-bit sample: 15 M pixels, 30 MB.
MAX_PIXELS = 2**26  # per frame (67 M, e.g. 8192 x 8192): its float64/float32 copies stay near 0.5 GB each
MAX_PIXEL_BYTES = 2**30  # pixel data of all frames as stored: 1 GiB

_PIL, _DICOM = "datamodules.readers:read_pil", "datamodules.dicom:read_dicom"
FORMATS: dict[str, str] = {".png": _PIL, ".jpg": _PIL, ".jpeg": _PIL, ".dcm": _DICOM, ".dicom": _DICOM}


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:
            # Re-raised from a DataLoader worker, torch passes one text: "Caught ImageReadError in
            # DataLoader worker ... Original Traceback ..."; keep only our own last line.
            lines = [ln for ln in str(path).splitlines() if ln.strip()]
            message = lines[-1].split("ImageReadError: ", 1)[-1] if lines else str(path)
            self.path, self.reason = None, message
            super().__init__(message)
            return
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {str(path)!r}: {reason}")

    def __reduce__(self):  # DataLoader workers pickle exceptions; keep both fields
        return type(self), (self.path, self.reason)


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a DICOM suffix or the `DICM` magic at byte 128: hospital exports (DICOMDIR
    trees, PACS dumps) often have no extension at all, so the magic is the reliable test."""
    path = Path(path)
    if FORMATS.get(path.suffix.lower()) == _DICOM:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def suffixes() -> str:
    """The file suffixes read as images, for messages."""
    return " ".join(sorted(FORMATS))


def decoder_modules() -> list[str]:
    """The modules that decode images (the preprocessing cache keys on their source)."""
    return sorted({spec.split(":")[0] for spec in FORMATS.values()})


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A 2-D float32 array in [0, 1], shape (rows, cols); ImageReadError (naming the file and what is
    wrong) for a missing, empty, truncated, corrupt or unknown file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "is a directory" if path.is_dir() else "file does not exist")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    # The DICOM magic wins over a misleading suffix; an unknown suffix goes to Pillow, which
    # recognises files by their content.
    module, name = (_DICOM if is_dicom(path) else FORMATS.get(path.suffix.lower(), _PIL)).split(":")
    arr = getattr(importlib.import_module(module), name)(path)
    # Rounding in the LUT/window arithmetic can step a hair outside [0, 1].
    return np.clip(arr, 0.0, 1.0, out=arr)


def check_size(path: Path, pixels: int, nbytes: int, shape: str) -> None:
    """Refuse an image that declares more than MAX_PIXELS per frame or MAX_PIXEL_BYTES in all."""
    if pixels > MAX_PIXELS or nbytes > MAX_PIXEL_BYTES:
        raise ImageReadError(
            path, f"declares an image of {shape}, more than this reader decodes ({MAX_PIXELS / 1e6:.0f} M "
            f"pixels per frame, {MAX_PIXEL_BYTES >> 20} MiB of pixel data): a damaged file or a decompression bomb?"
        )


def read_pil(path: Path) -> np.ndarray:
    """PNG (8- and 16-bit, the full depth kept), JPEG and whatever else Pillow decodes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                check_size(path, img.width * img.height, 0, f"{img.height} x {img.width} pixels")
                img.load()  # decode now, so truncated files fail here and not later
                if img.mode == "F":
                    return minmax(np.asarray(img).astype(np.float32))
                # Full 16-bit depth (mode "L" would drop 8 bits; older Pillow opens 16-bit PNG as "I").
                # Anything else (RGB, RGBA, LA, P, 1, CMYK, ...): ITU-R 601-2 luminance, alpha dropped.
                wide = img.mode.startswith("I;16") or img.mode == "I"
                arr = np.asarray(img if wide or img.mode == "L" else img.convert("L")).astype(np.float32)
                arr *= 1.0 / (65535.0 if wide else 255.0)
                return arr
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"too large to decode safely: {exc}") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise ImageReadError(path, f"not a readable image file ({type(exc).__name__}: {exc}); "
                                   f"formats: {suffixes()}") from exc


def minmax(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's range) onto [0, 1] in place; a constant image carries no
    contrast and becomes zeros, not a division by zero."""
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi == lo:
        arr[...] = 0.0
        return arr
    arr -= lo
    arr *= 1.0 / (hi - lo)
    return arr
