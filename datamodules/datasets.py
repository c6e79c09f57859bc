"""The datasets and the sampler behind XrayDataModule's loaders: items are (image, label, index
into the split's records), so evaluation can name each image by its record."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, WeightedRandomSampler

from datamodules.cache import CacheEntry
from datamodules.readers import read_image
from datamodules.records import Record


class XrayDataset(Dataset):
    """Items (image (1, H, W), label, index into records): read and resized (`transform`) when loaded,
    or uint pixels copied out of the `cache` (mapped in each process: loader workers share one copy)."""

    def __init__(self, records: list[Record], class_index: dict[str, int], *, transform: Callable | None = None,
                 cache: CacheEntry | None = None) -> None:
        self.records, self.class_index, self.transform, self.cache = records, class_index, transform, cache
        if cache is not None:
            rows = cache.rows
            self.rows = [rows[os.path.abspath(r.path)] for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        if self.cache is not None:  # np.array copies the image out of the read-only map
            image = torch.from_numpy(np.array(self.cache.images[self.rows[index]]))[None]
        else:
            image = self.transform(torch.from_numpy(read_image(record.path))[None])
        return image, self.class_index[record.label], index


class EpochSeededWeightedSampler(WeightedRandomSampler):
    """Weighted draws with replacement that depend only on (seed, pass number): under DDP every rank
    draws the same list and Lightning's DistributedSamplerWrapper gives each a disjoint shard."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int) -> None:
        super().__init__(weights, num_samples, replacement=True)
        self.seed, self._passes = seed, 0

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 100_003 + self._passes)
        self._passes += 1
        yield from super().__iter__()


def oversampled(dataset: XrayDataset, labels: list[int]) -> Subset:
    """`dataset` with minority-class items repeated so every class has as many as the largest one."""
    counts = Counter(labels)
    target = max(counts.values())
    indices: list[int] = []
    for cls in sorted(counts):
        members = [i for i, y in enumerate(labels) if y == cls]
        indices += (members * (target // len(members) + 1))[:target]
    return Subset(dataset, indices)
