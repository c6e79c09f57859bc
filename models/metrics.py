"""Classification metrics (torchmetrics) on class probabilities (N, C); binary tasks: class 1 is
positive. They are fed every rank's outputs, gathered once per image (so the padding
DistributedSampler adds under DDP counts nowhere): torchmetrics' own sync across ranks is off, as
it would count every image once per rank."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryCalibrationError,
    BinaryF1Score,
    BinaryRecall,
    BinarySensitivityAtSpecificity,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCalibrationError,
    MulticlassF1Score,
)

from models.metric_names import ARGMAX, DEFAULT_METRIC, logged_metric_names, metric_keys

__all__ = ["DEFAULT_METRIC", "ClassificationMetrics", "logged_metric_names"]

LOCAL = {"sync_on_compute": False}  # every rank holds every image's outputs already


class SensitivityAtSpecificity(BinarySensitivityAtSpecificity):
    """The best sensitivity at specificity >= min_specificity, without the threshold torchmetrics adds."""

    def compute(self) -> torch.Tensor:
        return super().compute()[0]


class ClassificationMetrics(nn.Module):
    """The metrics models/metric_names.py names for a task, on every rank's gathered outputs."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        multiclass = {
            "acc": lambda: MulticlassAccuracy(num_classes, average="micro", **LOCAL),
            "balanced_acc": lambda: MulticlassAccuracy(num_classes, average="macro", **LOCAL),
            "auroc": lambda: MulticlassAUROC(num_classes, **LOCAL),
            "f1": lambda: MulticlassF1Score(num_classes, average="macro", **LOCAL),
            "ece": lambda: MulticlassCalibrationError(num_classes, n_bins=15, **LOCAL),
        }
        binary = {
            "auroc": lambda: BinaryAUROC(**LOCAL),
            "average_precision": lambda: BinaryAveragePrecision(**LOCAL),
            "f1": lambda: BinaryF1Score(**LOCAL),
            "sensitivity": lambda: BinaryRecall(**LOCAL),
            "specificity": lambda: BinarySpecificity(**LOCAL),
            "sensitivity_at_spec90": lambda: SensitivityAtSpecificity(min_specificity=0.9, **LOCAL),
            "ece": lambda: BinaryCalibrationError(n_bins=15, **LOCAL),
        }
        # The names (models/metric_names.py) decide what is built; `binary` stays empty for multiclass.
        keys, two = metric_keys(num_classes), num_classes == 2
        self.multiclass = MetricCollection({k: multiclass[k]() for k in keys if k in ARGMAX or not two})
        self.binary = MetricCollection({k: binary[k]() for k in keys if two and k not in ARGMAX})

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.multiclass.update(probs, target)
        self.binary.update(probs[:, 1], target)

    def compute(self) -> dict[str, torch.Tensor]:
        return {**self.multiclass.compute(), **self.binary.compute()}

    def reset(self) -> None:
        self.multiclass.reset()
        self.binary.reset()

