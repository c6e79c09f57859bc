"""Preprocessing cache: built once under a lock, keyed on files and settings, shared without copies,
equal to the uncached pipeline; and the batch transforms that run after it on the device."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_dirs

from cli import cli_main
from datamodules import cache as cache_mod
from datamodules.cache import ensure_cache
from datamodules.datamodule import XrayDataModule
from datamodules.readers import ImageReadError
from datamodules.transforms import BatchAugment, ResizePad, to_unit


def dm(root, cache_dir, **kw) -> XrayDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("image_size", 32)
    kw.setdefault("batch_size", 4)
    return XrayDataModule(root=str(root), cache_dir=str(cache_dir), **kw)


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.suffix != ".lock")


def test_cache_is_built_once_and_reused(hand_data, tmp_path):
    first = dm(hand_data, tmp_path / "c")
    first.setup("fit")
    assert first.cache.built and len(first.cache.paths) == len(first.records)
    npy = first.cache.path / "images.npy"
    mtime, builds = npy.stat().st_mtime_ns, cache_mod._builds
    second = dm(hand_data, tmp_path / "c", val_fraction=0.3)  # another split: same pixels, same entry
    second.setup("fit")
    assert not second.cache.built and cache_mod._builds == builds
    assert second.cache.path == first.cache.path and npy.stat().st_mtime_ns == mtime
    assert entries(tmp_path / "c") == [first.cache.path]


def test_key_changes_with_image_size_dtype_and_files(hand_data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(hand_data, root)
    base = ensure_cache(sorted((root / "images").iterdir()), tmp_path / "c", image_size=16)
    other_size = ensure_cache(sorted((root / "images").iterdir()), tmp_path / "c", image_size=24)
    other_dtype = ensure_cache(sorted((root / "images").iterdir()), tmp_path / "c", image_size=16, dtype="uint8")
    assert other_size.built and other_dtype.built and other_dtype.images.dtype == np.uint8
    assert other_size.images.shape[1:] == (24, 24)
    victim = sorted((root / "images").iterdir())[0]
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # e.g. re-exported
    changed = ensure_cache(sorted((root / "images").iterdir()), tmp_path / "c", image_size=16)
    assert changed.built and changed.path != base.path
    assert len(entries(tmp_path / "c")) == 4


def _build_in_child(args) -> tuple[bool, bytes]:
    paths, cache_dir = args
    entry = ensure_cache(paths, cache_dir, image_size=32, workers=1)
    return entry.built, np.asarray(entry.images).tobytes()


def test_concurrent_builders_build_once_and_agree(hand_data, tmp_path):
    paths = sorted((hand_data / "images").iterdir())
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_build_in_child, [(paths, tmp_path / "c")] * 3)
    assert sum(built for built, _ in results) == 1
    assert len({data for _, data in results}) == 1
    assert len(entries(tmp_path / "c")) == 1 and not list((tmp_path / "c").glob(".*tmp*"))


@pytest.mark.parametrize("dtype, tolerance", [("uint16", 1 / 65535), ("uint8", 1 / 255)])
def test_cached_samples_equal_the_uncached_pipeline(hand_data, tmp_path, dtype, tolerance):
    cached = dm(hand_data, tmp_path / "c", cache_dtype=dtype)
    cached.setup("fit")
    plain = XrayDataModule(root=str(hand_data), num_workers=0, image_size=32, batch_size=4)
    plain.setup("fit")
    for split in ("train", "val"):
        for i in (0, 3):
            x_cached, y_cached, _ = cached._datasets[split][i]
            x_plain, y_plain, _ = plain._datasets[split][i]
            assert x_cached.dtype == getattr(torch, dtype) and y_cached == y_plain
            assert torch.allclose(to_unit(x_cached), x_plain, atol=tolerance / 2 + 1e-6)
    # The evaluation path after transfer (normalisation) equals the uncached one: the file read,
    # resized and normalised by the same data module code.
    assert cached._datasets["val"].records == plain._datasets["val"].records
    x, _, _ = cached.on_after_batch_transfer(next(iter(cached.val_dataloader())), 0)
    expected, _, _ = plain.on_after_batch_transfer(next(iter(plain.val_dataloader())), 0)
    assert torch.allclose(x, expected, atol=tolerance / 2 / 0.25 + 1e-5)


def test_workers_map_the_array_instead_of_receiving_it(hand_data, tmp_path):
    data = dm(hand_data, tmp_path / "c", num_workers=1, batch_size=8)
    data.setup("fit")
    dataset = data._datasets["train"]
    dataset[0]
    assert isinstance(data.cache._images, np.memmap)  # opened lazily, as a read-only map
    assert not data.cache._images.flags.writeable
    blob = pickle.dumps(dataset)
    assert len(blob) < data.cache.images.nbytes / 4 and pickle.loads(blob).cache._images is None
    x, y, index = next(iter(data.train_dataloader()))  # a worker process opens its own map
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.uint16


def _corrupt_copy(hand_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "copy"
    shutil.copytree(hand_data, root)
    victim = sorted((root / "images").iterdir())[5]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root, victim


def test_corrupt_file_names_it_and_leaves_no_cache(hand_data, tmp_path):
    root, victim = _corrupt_copy(hand_data, tmp_path)
    data = dm(root, tmp_path / "c")
    with pytest.raises(ImageReadError, match=victim.name):
        data.setup("fit")
    assert entries(tmp_path / "c") == []  # no entry, no temporary directory


def test_skip_bad_files_drops_and_counts_then_strict_runs_still_refuse(hand_data, tmp_path):
    root, victim = _corrupt_copy(hand_data, tmp_path)
    lenient = dm(root, tmp_path / "c", skip_bad_files=True)
    lenient.setup("fit")
    assert len(lenient.skipped) == 1 and victim.name in lenient.skipped[0]
    assert victim not in [r.path for r in lenient.records]
    assert sum(len(d) for s, d in lenient._datasets.items() if s != "predict") == len(lenient.records)
    with pytest.raises(ImageReadError, match=victim.name):  # the same entry, read by a strict run
        dm(root, tmp_path / "c").setup("fit")


def test_fit_from_the_cache_through_the_cli(fit_args, tmp_path):
    cli = cli_main(fit_args("configs/demo.yaml", f"--data.cache_dir={tmp_path / 'cache'}"))
    assert cli.datamodule.cache is not None and cli.trainer.global_step == 2
    assert len(entries(tmp_path / "cache")) == 1 and run_dirs(tmp_path)


def test_batch_augment_is_per_image_and_off_at_zero():
    x = torch.rand(6, 1, 16, 16)
    off = BatchAugment(hflip_prob=0, rotation_degrees=0, scale_jitter=0, intensity_jitter=0)
    assert torch.equal(off(x), x)
    flipped = BatchAugment(hflip_prob=1.0, rotation_degrees=0, scale_jitter=0, intensity_jitter=0)(x)
    assert torch.equal(flipped, x.flip(-1))
    out = BatchAugment(hflip_prob=0.5, rotation_degrees=20, scale_jitter=0.2, intensity_jitter=0.2)(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    # Each image draws its own parameters: the changes are not all alike.
    change = (out - x).abs().mean(dim=(1, 2, 3))
    assert change.std() > 0


def test_training_batches_are_augmented_and_eval_batches_are_not(hand_data, tmp_path):
    data = dm(hand_data, tmp_path / "c", hflip_prob=1.0, rotation_degrees=0, scale_jitter=0, intensity_jitter=0)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))

    class Trainer:
        training = True
        global_rank = 0
        world_size = 1

    data.trainer = Trainer()
    train_x = data.on_after_batch_transfer(batch, 0)[0]
    Trainer.training = False
    eval_x = data.on_after_batch_transfer(batch, 0)[0]
    assert torch.equal(train_x, eval_x.flip(-1))
    assert torch.allclose(eval_x, (to_unit(batch[0]) - 0.5) / 0.25)
    assert ResizePad(32)(torch.zeros(1, 40, 20)).shape == (1, 32, 32)


def test_the_key_follows_the_decoders_code_not_their_words(tmp_path):
    """A release that rewords a decoder's docstrings or comments (or moves its lines) keeps the
    cache; a change of its code builds a new entry (the key hashed the file's bytes: every
    docstring edit re-decoded every radiograph)."""
    from datamodules.cache import code_of

    module = tmp_path / "decoder.py"
    module.write_text('"""Decode."""\n\ndef window(x):\n    """Clip."""\n    return min(x, 1)  # why\n')
    before = code_of(module)
    module.write_text('"""Decode, reworded."""\n\n\ndef window(x):\n    """Clip it."""\n    return min(x, 1)\n')
    assert code_of(module) == before
    module.write_text('"""Decode."""\n\ndef window(x):\n    """Clip."""\n    return min(x, 2)  # why\n')
    assert code_of(module) != before
