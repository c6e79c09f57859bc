"""Classification metrics for binary and multiclass X-ray tasks, built on torchmetrics.

All metrics take class probabilities of shape (N, C). For binary tasks (C == 2) class 1
is the positive class (e.g. "abnormal"), so sensitivity, specificity and F1 refer to it.
torchmetrics keeps the states and synchronises them across DDP ranks in `compute()`.
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
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        }
        if num_classes > 2:
            multiclass["auroc"] = MulticlassAUROC(num_classes)
            multiclass["f1"] = MulticlassF1Score(num_classes, average="macro")
            multiclass["ece"] = MulticlassCalibrationError(num_classes, n_bins=15)
        self.multiclass = MetricCollection(multiclass)
        self.binary = (
            MetricCollection(
                {
                    "auroc": BinaryAUROC(),
                    "average_precision": BinaryAveragePrecision(),
                    "f1": BinaryF1Score(),
                    "sensitivity": BinaryRecall(),
                    "specificity": BinarySpecificity(),
                    "sensitivity_at_spec90": SensitivityAtSpecificity(min_specificity=0.9),
                    "ece": BinaryCalibrationError(n_bins=15),
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
