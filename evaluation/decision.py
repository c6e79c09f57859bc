"""The decision rule, stated once: an image is called positive when its positive-class
probability is at or above the threshold. torchmetrics' Binary* metrics call ``prob >
threshold`` instead, so figures at a chosen threshold come from evaluation.metrics, which uses
this rule (an image scoring exactly the threshold would otherwise count the other way)."""

from __future__ import annotations

import numpy as np


def called_positive(scores: np.ndarray, threshold: float) -> np.ndarray:
    return np.asarray(scores, dtype=np.float64) >= threshold
