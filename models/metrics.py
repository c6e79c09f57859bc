"""Classification metrics for binary and multiclass X-ray tasks, built on torchmetrics.

All metrics take class probabilities of shape (N, C). For binary tasks (C == 2) class 1
is the positive class (e.g. "abnormal"), so sensitivity, specificity and F1 refer to it.
The classifier feeds them the outputs of every rank, gathered once per image (so the padding
DistributedSampler adds under DDP counts nowhere), and every rank computes the same values:
torchmetrics' own synchronisation across ranks is off, as it would count every image once per
rank.
"""

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

# The sweep metric and checkpoint monitor when none is given.
DEFAULT_METRIC = "val/auroc"
# Metrics (without the stage prefix) for which lower is better: a sweep on them minimizes.
LOWER_IS_BETTER = ("loss", "ece")
# Every rank holds every image's outputs already; torchmetrics must not add them up again.
LOCAL = {"sync_on_compute": False}


class SensitivityAtSpecificity(BinarySensitivityAtSpecificity):
    """The best sensitivity among thresholds with specificity >= min_specificity (torchmetrics
    also returns that threshold; a logged metric is one number)."""

    def compute(self) -> torch.Tensor:
        return super().compute()[0]


class ClassificationMetrics(nn.Module):
    """Accuracy, balanced accuracy (mean per-class recall), AUROC, F1, expected calibration
    error (15 bins); for binary tasks also average precision, sensitivity and specificity (at
    0.5) and the best sensitivity at specificity >= 0.90 (threshold-free)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        multiclass = {
            "acc": MulticlassAccuracy(num_classes, average="micro", **LOCAL),
            "balanced_acc": MulticlassAccuracy(num_classes, average="macro", **LOCAL),
        }
        if num_classes > 2:
            multiclass["auroc"] = MulticlassAUROC(num_classes, **LOCAL)
            multiclass["f1"] = MulticlassF1Score(num_classes, average="macro", **LOCAL)
            multiclass["ece"] = MulticlassCalibrationError(num_classes, n_bins=15, **LOCAL)
        self.multiclass = MetricCollection(multiclass)
        self.binary = (
            MetricCollection(
                {
                    "auroc": BinaryAUROC(**LOCAL),
                    "average_precision": BinaryAveragePrecision(**LOCAL),
                    "f1": BinaryF1Score(**LOCAL),
                    "sensitivity": BinaryRecall(**LOCAL),
                    "specificity": BinarySpecificity(**LOCAL),
                    "sensitivity_at_spec90": SensitivityAtSpecificity(min_specificity=0.9, **LOCAL),
                    "ece": BinaryCalibrationError(n_bins=15, **LOCAL),
                }
            )
            if num_classes == 2
            else None
        )

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.multiclass.update(probs, target)
        if self.binary is not None:
            self.binary.update(probs[:, 1], target)

    def compute(self) -> dict[str, torch.Tensor]:
        values = dict(self.multiclass.compute())
        if self.binary is not None:
            values.update(self.binary.compute())
        return values

    def names(self) -> list[str]:
        """The keys compute() returns, in order: the one list of what a task logs."""
        names = list(self.multiclass.keys())
        if self.binary is not None:
            names += [k for k in self.binary.keys() if k not in names]
        return names

    def reset(self) -> None:
        self.multiclass.reset()
        if self.binary is not None:
            self.binary.reset()


def logged_metric_names(num_classes: int, stage: str = "val") -> list[str]:
    """Every metric the classifier logs for `stage` on a task of `num_classes` classes, e.g.
    val/loss, val/auroc, ...; sweeps check their metric and objective against this list."""
    return [f"{stage}/loss", *(f"{stage}/{k}" for k in ClassificationMetrics(num_classes).names())]
