"""Records, patient-level splits, balancing, transforms and bad input of the data module."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.datamodule import XrayDataModule
from datamodules.readers import ImageReadError
from datamodules.records import DataError
from datamodules.transforms import ResizePad


def write_png(path: Path, value: int = 1000, shape=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint16)).save(path)


def write_manifest(root: Path, rows: list[dict]) -> Path:
    path = root / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def dm(root, **kw) -> XrayDataModule:
    kw.setdefault("num_workers", 0)
    kw.setdefault("image_size", 32)
    kw.setdefault("batch_size", 4)
    return XrayDataModule(root=str(root), **kw)


def test_folder_layout_with_splits(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("normal", "abnormal"):
            for i in range(3):
                write_png(tmp_path / split / cls / f"{i}.png")
    data = dm(tmp_path, classes=["normal", "abnormal"])
    assert {s: len(v) for s, v in data.split_records.items()} == {"train": 6, "val": 6, "test": 6}
    assert data.class_names == ["normal", "abnormal"]


def test_manifest_splits_are_patient_level_and_stratified(hand_data):
    data = dm(hand_data, val_fraction=0.25, test_fraction=0.25, split_seed=5)
    split_of_patient: dict[str, set] = {}
    for record in data.records:
        split_of_patient.setdefault(record.patient_id, set()).add(record.split)
    assert all(len(s) == 1 for s in split_of_patient.values())  # no patient in two splits
    for split in ("train", "val", "test"):
        assert {r.label for r in data.split_records[split]} == {"normal", "abnormal"}
    again = dm(hand_data, val_fraction=0.25, test_fraction=0.25, split_seed=5)
    assert [r.split for r in again.records] == [r.split for r in data.records]  # seeded


def test_given_splits_are_kept_and_leaks_refused(tmp_path):
    for i in range(6):
        write_png(tmp_path / f"{i}.png")
    rows = [{"path": f"{i}.png", "label": "ab" if i % 2 else "no", "split": "train" if i < 4 else "val",
             "patient_id": f"p{i}"} for i in range(6)]
    write_manifest(tmp_path, rows)
    data = dm(tmp_path)
    assert [r.split for r in data.records] == ["train"] * 4 + ["val"] * 2
    rows[5]["patient_id"] = "p0"  # p0 now in train and val
    write_manifest(tmp_path, rows)
    with pytest.raises(DataError, match="1 patient.*more than one split") as error:
        dm(tmp_path)
    assert "0.png" in str(error.value) and "p0" not in str(error.value)  # images named, not patient IDs


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"path": "missing.png", "label": "a"}], r"(?s)1 of 1 file\(s\) do not exist.*line 2: missing.png"),
        ([{"file": "0.png", "label": "a"}], r"lacks column\(s\) \['path'\]"),
        ([{"path": "0.png", "label": "a", "split": "training"}], "split 'training' is not one of"),
    ],
)
def test_bad_manifest_rows_name_the_line(tmp_path, rows, message):
    write_png(tmp_path / "0.png")
    write_manifest(tmp_path, rows)
    with pytest.raises(DataError, match=message):
        dm(tmp_path)


def test_unknown_label_lists_allowed_classes(hand_data):
    with pytest.raises(DataError, match=r"(?s)unknown label\(s\) \['abnormal'\].*\['normal', 'oa'\]"):
        dm(hand_data, classes=["normal", "oa"])


def test_missing_root_says_how_to_get_data(tmp_path):
    with pytest.raises(DataError, match="(?s)does not exist.*python -m datamodules.synthetic.*demo.body_part=hand"):
        dm(tmp_path / "nope")


def test_constructing_the_data_module_writes_nothing(tmp_path):
    with pytest.raises(DataError):
        dm(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_demo_data_is_generated_on_first_use_by_the_cli(tmp_path):
    from datamodules.demo import ensure_demo_data
    from training.options import DemoOptions

    foot = DemoOptions(body_part="foot", count=12, size=48)
    ensure_demo_data(str(tmp_path / "demo"), foot, seed=0)
    data = dm(tmp_path / "demo")
    assert len(data.records) == 12 and (tmp_path / "demo" / "manifest.csv").is_file()
    before = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert before == ["images", "manifest.csv", "synthetic.json"]  # one record of how it was made
    ensure_demo_data(str(tmp_path / "demo"), foot, seed=0)  # the same settings: the folder is used


def test_a_stale_or_foreign_demo_folder_stops_the_run_naming_its_record(tmp_path):
    """A demo folder made with other demo.* settings (or by hand, or damaged) is never written
    over nor silently trained on: one error names its synthetic.json, what differs, what to do."""
    from datamodules.demo import ensure_demo_data
    from training.options import DemoOptions

    root = tmp_path / "demo"
    ensure_demo_data(str(root), DemoOptions(body_part="foot", count=12, size=48), seed=0)
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(DataError) as e:
        ensure_demo_data(str(root), DemoOptions(body_part="hand", count=4, size=48), seed=0)
    message = str(e.value)
    assert f"{root / 'synthetic.json'}:" in message and "body_part 'foot' there, 'hand' asked" in message
    assert "count 12 there, 4 asked" in message and f"delete {root}" in message and "demo.body_part=null" in message
    with pytest.raises(DataError, match="seed 0 there, 1 asked"):  # the demo's seed is data.split_seed
        ensure_demo_data(str(root), DemoOptions(body_part="foot", count=12, size=48), seed=1)
    for junk in ("[1, 2]", "{not json", ""):  # a damaged record: nothing to trust, say so
        (root / "synthetic.json").write_text(junk)
        with pytest.raises(DataError, match=r"synthetic\.json is missing or damaged"):
            ensure_demo_data(str(root), DemoOptions(body_part="foot", count=12, size=48), seed=0)
    assert sorted(p.name for p in root.rglob("*")) == before  # never written over


def test_corrupt_image_fails_naming_the_file_or_is_skipped_and_counted(hand_data, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(hand_data, root)
    victim = sorted((root / "images").iterdir())[5]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    strict = dm(root)
    strict.setup("fit")
    index = next(i for split in ("train", "val", "test") for i, r in enumerate(strict.split_records[split])
                 if r.path == victim)
    dataset = next(strict._datasets[s] for s in ("train", "val", "test") if victim in
                   [r.path for r in strict._datasets[s].records])
    with pytest.raises(ImageReadError, match=victim.name):
        dataset[index]
    lenient = dm(root, skip_bad_files=True)
    lenient.setup("fit")
    assert len(lenient.skipped) == 1 and victim.name in lenient.skipped[0]
    assert victim not in [r.path for r in lenient.records]
    assert len(lenient.records) == len(strict.records) - 1


def _train_labels(data: XrayDataModule, epochs: int = 1) -> Counter:
    counts: Counter = Counter()
    for _ in range(epochs):
        for _, y, _ in data.train_dataloader():
            counts.update(y.tolist())
    return counts


@pytest.mark.parametrize("balancing", ["weighted_sampler", "oversample"])
def test_balancing_makes_classes_about_equally_frequent(hand_data, balancing):
    data = dm(hand_data, balancing=balancing, image_size=8)
    data.setup("fit")
    natural = Counter(data.class_index[r.label] for r in data.split_records["train"])
    assert natural[1] / sum(natural.values()) < 0.4  # imbalanced to begin with
    seen = _train_labels(data, epochs=3)
    assert 0.35 < seen[1] / sum(seen.values()) < 0.65


def test_class_weights_only_when_asked(hand_data):
    assert dm(hand_data).class_weights is None
    weights = dm(hand_data, balancing="class_weights").class_weights
    counts = dm(hand_data).train_class_counts
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1], rel=1e-4)


def test_resize_pad_keeps_aspect_and_orientation():
    img = torch.zeros(1, 100, 50)
    img[:, :10, :10] = 1.0  # marker in the top-left corner
    out = ResizePad(40)(img)
    assert out.shape == (1, 40, 40)
    # 100x50 -> 40x20, centred horizontally: columns 10..29 hold the image
    assert out[0, :, :10].abs().sum() == 0 and out[0, :, 30:].abs().sum() == 0
    assert out[0, :4, 10:14].mean() > 0.9 and out[0, 36:, 26:30].mean() < 0.1


def test_the_evaluation_path_normalizes_and_does_not_augment(hand_data):
    """What val/test/predict batches go through on the device (on_after_batch_transfer, no trainer
    fitting): pixels to [0, 1] (floats, or uint16 from the cache), then (x - 0.5) / 0.25."""
    data = dm(hand_data, image_size=16, hflip_prob=1.0, intensity_jitter=0.5)
    rest = [torch.zeros(2, dtype=torch.int64), torch.arange(2)]
    for batch in (torch.full((2, 1, 16, 16), 0.75), torch.full((2, 1, 16, 16), 49151, dtype=torch.uint16)):
        x, *_ = data.on_after_batch_transfer([batch, *rest], 0)
        assert torch.allclose(x, torch.ones_like(x), atol=1e-4)
    ramp = torch.linspace(0, 1, 16).expand(2, 1, 16, 16)
    x, *_ = data.on_after_batch_transfer([ramp, *rest], 0)
    assert torch.allclose(x, (ramp - 0.5) / 0.25)  # not flipped, no intensity jitter


def test_batches_have_the_configured_size_and_shape(hand_data):
    data = dm(hand_data, batch_size=5, image_size=24)
    data.setup("fit")
    x, y, index = next(iter(data.train_dataloader()))
    assert x.shape == (5, 1, 24, 24) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and index.shape == (5,)


def test_default_class_order_makes_the_abnormal_class_positive(hand_data):
    assert dm(hand_data).class_names == ["normal", "abnormal"]  # not alphabetical
    assert dm(hand_data, classes=["abnormal", "normal"]).class_names == ["abnormal", "normal"]


def test_ddp_ranks_augment_the_same_images_differently_but_repeatably(hand_data):
    from types import SimpleNamespace

    def augmented(rank: int) -> torch.Tensor:
        torch.manual_seed(42)  # seed_everything gives every rank the same global seed
        data = dm(hand_data, image_size=16)
        data.trainer = SimpleNamespace(training=True, global_rank=rank, world_size=2)
        batch = [torch.full((4, 1, 16, 16), 0.5), torch.zeros(4), torch.arange(4)]
        batch[0][:, :, :, :4] = 1.0  # an asymmetric image, so flips and rotations show
        return data.on_after_batch_transfer(batch, 0)[0]

    assert not torch.allclose(augmented(0), augmented(1))
    assert torch.equal(augmented(1), augmented(1))


def test_train_batches_are_kept_when_each_rank_gets_fewer_images_than_a_batch(hand_data):
    from types import SimpleNamespace

    data = dm(hand_data, batch_size=8, image_size=8)
    data.setup("fit")
    data.trainer = SimpleNamespace(world_size=8, training=True, global_rank=0)
    assert data.train_dataloader().drop_last is False  # 4-5 images per rank: dropping would leave none
    data.trainer = SimpleNamespace(world_size=1, training=True, global_rank=0)
    assert data.train_dataloader().drop_last is True
