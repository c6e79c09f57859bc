"""The datasets and the sampler behind XrayDataModule's loaders: items are (image, label, index
into the split's records), so evaluation can name each image by its record."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from datamodules.cache import CacheEntry
from datamodules.readers import read_image
from datamodules.records import Record


class XrayDataset(Dataset):
    """Reads one record per item; returns (transform(image (1, H, W)), label, index into records).

    The data module's transform is ResizePad: augmentation and normalisation run on whole
    batches on the device (XrayDataModule.on_after_batch_transfer).
    """

    def __init__(self, records: list[Record], class_index: dict[str, int], transform: Callable) -> None:
        self.records, self.class_index, self.transform = records, class_index, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = torch.from_numpy(read_image(record.path))[None]
        return self.transform(image), self.class_index[record.label], index


class EpochSeededWeightedSampler(Sampler[int]):
    """Draws `num_samples` indices with replacement, weighted; each pass uses a new seed.

    The draw depends only on (seed, pass number), so under DDP every rank draws the same
    list and Lightning's DistributedSamplerWrapper gives each rank a disjoint shard of it.
    """

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int) -> None:
        self.weights, self.num_samples, self.seed, self._passes = weights, num_samples, seed, 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self._passes)
        self._passes += 1
        yield from torch.multinomial(self.weights, self.num_samples, True, generator=generator).tolist()


class OversampledDataset(Dataset):
    """Repeats minority-class items so every class has as many items as the largest one."""

    def __init__(self, dataset: XrayDataset, labels: list[int]) -> None:
        counts = Counter(labels)
        target = max(counts.values())
        self.dataset, self.indices = dataset, []
        for cls in sorted(counts):
            members = [i for i, y in enumerate(labels) if y == cls]
            self.indices += (members * (target // len(members) + 1))[:target]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


class CachedXrayDataset(Dataset):
    """Like XrayDataset, but items come from the cache: (uint image (1, S, S), label, index).

    The array is opened on first access in each process (loader workers included) and is not
    pickled with the dataset, so N workers share one copy through the page cache.
    """

    def __init__(self, records: list[Record], class_index: dict[str, int], entry: CacheEntry) -> None:
        self.records, self.class_index, self.entry = records, class_index, entry
        rows = entry.rows
        self.rows = [rows[os.path.abspath(r.path)] for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        # np.array copies one image out of the read-only map (the batch needs its own memory anyway).
        image = torch.from_numpy(np.array(self.entry.images[self.rows[index]]))[None]
        return image, self.class_index[self.records[index].label], index
