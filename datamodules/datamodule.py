"""XrayDataModule: one data module for hand and foot radiographs (folders or a CSV manifest)."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.cache import CacheDtype, CacheEntry, ensure_cache
from datamodules.datasets import EpochSeededWeightedSampler, XrayDataset, oversampled
from datamodules.readers import ImageReadError, read_image, suffixes
from datamodules.records import DataError, Record, read_manifest, scan_folder
from datamodules.splits import assign_folds, assign_splits, check_labels
from datamodules.transforms import XRAY_MEAN, XRAY_STD, BatchAugment, ResizePad, to_unit

log = logging.getLogger(__name__)

Balancing = Literal["none", "class_weights", "weighted_sampler", "oversample"]


class XrayDataModule(pl.LightningDataModule):
    def __init__(
        self,
        root: str = "data/ra_hand",
        manifest: Optional[str] = None,
        classes: Optional[list[str]] = None,
        image_size: int = 224,
        batch_size: int = 32,
        num_workers: int = 4,
        balancing: Balancing = "none",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        skip_bad_files: bool = False,
        allow_outside_root: bool = False,
        hflip_prob: float = 0.5,
        rotation_degrees: float = 10.0,
        scale_jitter: float = 0.1,
        intensity_jitter: float = 0.1,
        predict_split: Literal["train", "val", "test", "all"] = "test",
        cache_dir: Optional[str] = None,
        cache_dtype: CacheDtype = "uint16",
        folds: int = 0,
        fold: Optional[int] = None,
    ) -> None:
        """
        Args:
            root: folder with root/{train,val,test}/{class}/file, root/{class}/file or a manifest.
            manifest: CSV `path,label[,split][,patient_id]`, relative to root; default
                root/manifest.csv when it exists, else the folder layout.
            classes: class names in label order, the positive class last; default: those found.
            image_size: side of the square network input (images resized keeping their aspect ratio, padded).
            batch_size: per GPU (per process): the global batch is batch_size x devices.
            num_workers: DataLoader worker processes per GPU.
            balancing: none; class_weights (weighted loss); weighted_sampler (draw classes
                equally often, with replacement); oversample (repeat minority-class images).
            val_fraction: fraction of patients for validation when splits are not given.
            test_fraction: fraction of patients for testing when splits are not given.
            split_seed: seed of the patient-level split.
            skip_bad_files: leave out unreadable images, reported (off: one stops the run, named).
            allow_outside_root: read manifest rows and symlinks that lead outside the data root
                (off: they stop the run, listed); skip reports and predictions then name them
                outside-root/..., not by path or file name (README, Privacy).
            hflip_prob: training augmentation, probability of a horizontal flip.
            rotation_degrees: training augmentation, maximum rotation.
            scale_jitter: training augmentation, relative zoom range.
            intensity_jitter: training augmentation, brightness/contrast range.
            predict_split: which split `predict` runs on.
            cache_dir: preprocessing cache folder, shared by all runs on the machine (README,
                Performance); needs images x image_size^2 x (1 or 2) bytes of disk. Default: none.
            cache_dtype: uint16 keeps 16-bit radiographs' depth; uint8 halves disk and page-cache use.
            folds: k of k-fold cross-validation over the non-test images (whole patients,
                label-stratified, fixed by split_seed); 0: none. Trains one fold (see fold);
                `--cv.folds` trains all as one run.
            fold: with folds, the fold used for validation (0..folds-1); the others train.
        """
        super().__init__()
        self.save_hyperparameters()
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise DataError(f"data.{name} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise DataError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
        for name, value in (("image_size", image_size), ("batch_size", batch_size)):
            if value < 1:
                raise DataError(f"data.{name} must be >= 1, got {value}")
        self.root = Path(root).expanduser()
        records, self.source = self._load_records(manifest)  # source: the manifest or folder, for messages
        self.class_names = check_labels(records, classes, self.source)
        self.class_index = {name: i for i, name in enumerate(self.class_names)}
        self.records = assign_splits(records, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed)
        self.fold_of: dict[str, int] = {}
        if folds:
            self.fold_of = assign_folds([r for r in self.records if r.split != "test"], folds=folds, seed=split_seed)
            if fold is not None:
                if not 0 <= fold < folds:
                    raise DataError(f"data.fold must be in 0..{folds - 1} (data.folds={folds}), got {fold}")
                self.records = [r if r.split == "test" else
                                replace(r, split="val" if self.fold_of[r.patient_id] == fold else "train")
                                for r in self.records]
        elif fold is not None:
            raise DataError(f"data.fold={fold} needs data.folds (the number of folds), e.g. data.folds=5")
        self.split_records = {s: [r for r in self.records if r.split == s] for s in ("train", "val", "test")}
        if not self.split_records["train"]:
            raise DataError(f"{self.source}: the training split is empty")
        self.skipped: list[str] = []
        self._datasets: dict[str, Dataset] = {}
        self.cache: Optional[CacheEntry] = None
        self.augment = BatchAugment(hflip_prob=hflip_prob, rotation_degrees=rotation_degrees,
                                    scale_jitter=scale_jitter, intensity_jitter=intensity_jitter)

    def _load_records(self, manifest: Optional[str]) -> tuple[list[Record], str]:
        if not self.root.is_dir():
            raise DataError(
                f"Data root {self.root} does not exist. Point data.root at a folder laid out as "
                "root/{train,val,test}/{class}/image or root/{class}/image, or holding a manifest.csv "
                "(path,label[,split][,patient_id]); or make a synthetic demo set with "
                f"`python -m datamodules.synthetic --out {self.root} --body-part hand --count 400` "
                "(or set demo.body_part=hand to generate it on first use)."
            )
        manifest_path = Path(manifest) if manifest else self.root / "manifest.csv"
        if manifest and not manifest_path.is_absolute() and not manifest_path.exists():
            manifest_path = self.root / manifest
        if manifest_path.is_file():
            records = read_manifest(manifest_path, self.root, allow_outside_root=self.hparams.allow_outside_root)
            return records, str(manifest_path)
        if manifest:
            raise DataError(f"data.manifest {manifest} does not exist (looked in . and {self.root})")
        records = scan_folder(self.root, allow_outside_root=self.hparams.allow_outside_root)
        if not records:
            raise DataError(
                f"No images found under {self.root}: expected root/{{train,val,test}}/{{class}}/image, "
                f"root/{{class}}/image ({suffixes()}) or a manifest.csv"
            )
        return records, str(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_class_counts(self) -> list[int]:
        counts = Counter(r.label for r in self.split_records["train"])
        return [counts.get(name, 0) for name in self.class_names]

    @property
    def class_weights(self) -> Optional[list[float]]:
        """Inverse-frequency loss weights (mean 1) when balancing is class_weights, else None."""
        if self.hparams.balancing != "class_weights":
            return None
        counts = self.train_class_counts
        return [round(sum(counts) / (len(counts) * c), 6) if c else 0.0 for c in counts]

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if hp.cache_dir and self.cache is None:
            self._open_cache()
        elif hp.skip_bad_files and not self._datasets:
            self._drop_unreadable()
        if stage == "fit" and not self.split_records["val"]:
            raise DataError(
                f"The validation split of {self.root} is empty: give a val split or set data.val_fraction > 0"
            )
        predict = self.records if hp.predict_split == "all" else self.split_records[hp.predict_split]
        splits = {**self.split_records, "predict": predict}
        resize = ResizePad(hp.image_size)
        self._datasets = {s: XrayDataset(r, self.class_index, transform=resize, cache=self.cache)
                          for s, r in splits.items()}

    def _open_cache(self) -> None:
        hp = self.hparams
        try:
            self.cache = ensure_cache([r.path for r in self.records], hp.cache_dir, image_size=hp.image_size,
                                      dtype=hp.cache_dtype, skip_bad_files=hp.skip_bad_files)
        except ImageReadError as e:  # name the file as configured, not by its absolute path
            as_configured = {os.path.abspath(r.path): r.path for r in self.records}
            raise ImageReadError(as_configured.get(os.path.abspath(e.path or ""), e.path), e.reason) from None
        self._drop([self.cache.bad.get(os.path.abspath(r.path)) for r in self.records])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, *rest = batch
        return [self.batch_transform(x, train=self.trainer is not None and self.trainer.training), *rest]

    def batch_transform(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        """Pixels to [0, 1], augmentation while training, normalisation: on the device, per batch."""
        x = to_unit(x)
        if train:
            x = self.augment(x, self._augment_generator(x.device))
        return (x - XRAY_MEAN) / XRAY_STD

    def _augment_generator(self, device: torch.device) -> torch.Generator:
        """One generator per rank and device, seeded from the run's seed and the rank: every
        rank starts from the same global seed, and would otherwise augment its images alike."""
        if getattr(self, "_generator", None) is None or self._generator.device != device:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed((torch.initial_seed() + 1_000_003 * rank) % 2**63)
        return self._generator

    def _drop_unreadable(self) -> None:
        def reason(record: Record) -> Optional[str]:
            try:
                read_image(record.path)
            except ImageReadError as e:
                return e.reason
            return None

        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            self._drop(list(pool.map(reason, self.records)))

    def _drop(self, reasons: list[Optional[str]]) -> None:
        """Leave out the records with a reason (one per record), reported by `rel`, never by path."""
        bad = {r for r, why in zip(self.records, reasons, strict=True) if why}
        self.skipped = [f"{r.rel}: {why}" for r, why in zip(self.records, reasons, strict=True) if why]
        if bad:
            log.warning("Skipped %d of %d unreadable image(s) (data.skip_bad_files=true):\n  %s",
                        len(bad), len(self.records), "\n  ".join(self.skipped[:10]))
            self.records = [r for r in self.records if r not in bad]
            self.split_records = {s: [r for r in v if r not in bad] for s, v in self.split_records.items()}

    def has_split(self, split: str) -> bool:
        return bool(self.split_records.get(split))

    def records_of(self, split: str) -> list[Record]:
        """The records of `split` ("train", "val", "test" or "predict") in the order its dataset
        indexes them: batches carry that index."""
        return self._datasets[split].records if split in self._datasets else self.split_records[split]

    def _loader(self, dataset: Dataset, *, sampler: Optional[Sampler] = None,
                train: bool = False) -> DataLoader:
        hp = self.hparams
        # A last training batch of one image breaks BatchNorm (and is a noisy step anyway).
        world = self.trainer.world_size if self.trainer is not None else 1
        drop_last = train and math.ceil(len(dataset) / world) > hp.batch_size  # per-rank shard
        # Keyword arguments only: Lightning re-creates the loader from them (its sampler injection).
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=train and sampler is None,
                          sampler=sampler, num_workers=hp.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=hp.num_workers > 0, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        dataset = self._datasets["train"]
        labels = [self.class_index[r.label] for r in dataset.records]
        if self.hparams.balancing == "oversample":
            return self._loader(oversampled(dataset, labels), train=True)
        if self.hparams.balancing == "weighted_sampler":
            counts = Counter(labels)
            weights = torch.tensor([1.0 / counts[y] for y in labels], dtype=torch.double)
            sampler = EpochSeededWeightedSampler(weights, len(labels), seed=self.hparams.split_seed)
            return self._loader(dataset, sampler=sampler, train=True)
        return self._loader(dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["test"])

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._datasets["predict"])
