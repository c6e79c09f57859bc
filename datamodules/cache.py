"""Preprocessing cache (README, Performance): every image read, resized and quantised once into
one memory-mapped array, shared by all runs, DDP ranks and loader workers through the page cache.

    cache_dir/<size>px-<dtype>-<key>/images.npy   (N, S, S) uint8 or uint16, rows = `paths`
    cache_dir/<size>px-<dtype>-<key>/meta.json    paths (row order), unreadable files, timings
    cache_dir/<size>px-<dtype>-<key>.lock         flock: one builder, the others wait

The key hashes each file's path, size and mtime_ns, not its contents (that would read a whole
cohort, terabytes, at every start; any tool that rewrites a file changes its mtime), and the
source of transforms.py and of the decoders (`readers.FORMATS`), so a fix to them rebuilds.
An entry is built in a temporary directory and renamed into place under the lock: a killed
builder leaves none. flock works on local disks and NFSv4; elsewhere use a local cache_dir.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

import numpy as np
import torch
from filelock import FileLock, Timeout

from datamodules import transforms
from datamodules.readers import ImageReadError, decoder_modules, read_image
from datamodules.transforms import ResizePad

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the layout or the quantisation changes
CacheDtype = Literal["uint8", "uint16"]
_builds = 0  # how many entries this process has built (tests check reuse with it)


@dataclass
class CacheEntry:
    """A built cache entry. `images` opens the array lazily (once per process) and is dropped
    when pickled, so loader workers map the file themselves instead of receiving a copy."""

    path: Path
    paths: list[str]
    bad: dict[str, str]  # unreadable file -> reason (only kept when skip_bad_files allowed it)
    built: bool = False  # this call built it (rather than found it)
    _images: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def rows(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


def cache_key(paths: Sequence[str | os.PathLike], *, image_size: int, dtype: CacheDtype) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_VERSION, image_size, dtype]).encode())
    for module in (*map(importlib.import_module, decoder_modules()), transforms):
        digest.update(code_of(Path(module.__file__)))
    for path in paths:
        st = os.stat(path)
        digest.update(f"{os.fspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def code_of(source: Path) -> bytes:
    """A Python module's code without its docstrings, comments and layout: a release that only
    rewords them keeps every cache (a rebuild of real radiographs takes hours); other files whole."""
    if source.suffix != ".py":
        return source.read_bytes()
    tree = ast.parse(source.read_bytes())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.dump(tree).encode()


def _load(entry_dir: Path) -> Optional[CacheEntry]:
    try:
        meta = json.loads((entry_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return CacheEntry(entry_dir, meta["paths"], meta["bad"])


def ensure_cache(
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    *,
    image_size: int,
    dtype: CacheDtype = "uint16",
    skip_bad_files: bool = False,
    workers: Optional[int] = None,
) -> CacheEntry:
    """The cache entry for these files and settings, built first if needed; ImageReadError for an
    unreadable file unless skip_bad_files (no entry is left)."""
    if dtype not in get_args(CacheDtype):
        raise ValueError(f"data.cache_dtype must be one of {list(get_args(CacheDtype))}, got {dtype!r}")
    paths = sorted({os.path.abspath(p) for p in paths})
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"{image_size}px-{dtype}-{cache_key(paths, image_size=image_size, dtype=dtype)}"
    entry_dir = cache_dir / name
    entry = _load(entry_dir)  # fast path: built before, no lock needed (the rename was atomic)
    if entry is None:
        lock = FileLock(cache_dir / f"{name}.lock")  # flock on POSIX, as the sweep storage's lock
        try:
            held = lock.acquire(blocking=False)
        except Timeout:
            log.info("Waiting for another process to finish building the preprocessing cache %s", entry_dir)
            held = lock.acquire()
        with held:  # released on leaving; the entry may have been built while we waited
            entry = _load(entry_dir) or _build(paths, entry_dir, image_size=image_size, dtype=dtype,
                                               skip_bad_files=skip_bad_files, workers=workers)
    if entry.bad and not skip_bad_files:
        path, reason = next(iter(entry.bad.items()))
        raise ImageReadError(path, f"{reason} (found while building the cache {entry_dir}; "
                                   "set data.skip_bad_files=true to leave such files out)")
    return entry


def _build(paths: list[str], entry_dir: Path, *, image_size: int, dtype: CacheDtype, skip_bad_files: bool,
           workers: Optional[int]) -> CacheEntry:
    global _builds
    for stale in entry_dir.parent.glob(f".{entry_dir.name}.tmp-*"):  # left by a killed builder
        shutil.rmtree(stale, ignore_errors=True)
    tmp = entry_dir.parent / f".{entry_dir.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    workers = workers or min(16, os.cpu_count() or 1)
    log.info("Building the preprocessing cache %s: %d images at %d px, %d threads", entry_dir, len(paths),
             image_size, workers)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=dtype,
                                           shape=(len(paths), image_size, image_size))
        resize, scale, bad, done, lock = ResizePad(image_size), np.iinfo(dtype).max, {}, [0], threading.Lock()
        failed = threading.Event()

        def one(row: int) -> None:
            if failed.is_set():
                return
            try:
                pixels = resize(torch.from_numpy(read_image(paths[row]))[None])[0].numpy()
            except ImageReadError as e:
                if not skip_bad_files:
                    failed.set()
                    raise
                bad[paths[row]] = e.reason  # the row stays zero and is never read
                return
            images[row] = np.rint(pixels * scale)
            with lock:
                done[0] += 1
                if done[0] % max(1, len(paths) // 10) == 0:
                    rate = done[0] / (time.perf_counter() - start)
                    log.info("  cache: %d/%d images, %.1f images/s", done[0], len(paths), rate)

        torch.set_num_threads(1)  # parallel over images, not inside each resize
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(one, row) for row in range(len(paths))]:
                future.result()  # re-raises the first ImageReadError (the others stop early)
        images.flush()
        seconds = time.perf_counter() - start
        meta = {"version": CACHE_VERSION, "image_size": image_size, "dtype": dtype, "paths": paths,
                "bad": dict(sorted(bad.items())), "seconds": round(seconds, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
        tmp.chmod(0o755)
        os.replace(tmp, entry_dir)  # the entry appears complete or not at all
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    _builds += 1
    log.info("Built the preprocessing cache %s in %.1f s (%.1f images/s)%s", entry_dir, seconds,
             len(paths) / max(seconds, 1e-9), f"; {len(bad)} unreadable file(s) left out" if bad else "")
    return CacheEntry(entry_dir, paths, meta["bad"], built=True)
