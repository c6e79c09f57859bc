"""Calibration: do the probabilities mean what they say? (README, "Calibration")

ECE and the reliability diagram bin a confidence and an outcome per image on [0, 1], as
torchmetrics' ``binary_calibration_error`` (the positive-class probability; is the image
positive?) and ``multiclass_calibration_error`` (the top probability; is the argmax right?),
except that a probability of exactly 1.0 goes into the last bin (torchmetrics: a bin of its own).
ECE is biased upwards in small samples: compare models on the same data, not against zero.
Temperature scaling (Guo et al. 2017) divides the logits by one T > 0 fitted on VALIDATION by
minimum NLL: no ranking changes (AUROC, argmax), only the confidence.
"""

from __future__ import annotations

import math

import numpy as np

from evaluation.metrics import _divide, _out, as_weights

N_BINS = 15
TEMPERATURE_BOUNDS = (0.01, 100.0)


def _confidence_outcome(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim == 1:
        return probs, (labels == 1).astype(np.float64)
    if probs.shape[1] == 2:
        return probs[:, 1], (labels == 1).astype(np.float64)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS, weights: np.ndarray | None = None
) -> np.ndarray | float:
    """Sum over bins of (bin's share of images) * |mean confidence - observed frequency|."""
    confidence, outcome = _confidence_outcome(probs, labels)
    w, single = as_weights(weights, len(confidence))
    member = (_bin_index(confidence, n_bins)[:, None] == np.arange(n_bins)).astype(np.float64)
    sums = w @ np.concatenate([member * confidence[:, None], member * outcome[:, None]], axis=1)
    gap = np.abs(sums[:, :n_bins] - sums[:, n_bins:]).sum(axis=1)
    return _out(_divide(gap, w.sum(axis=1)), single)


def brier_score(
    probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | float:
    """Binary: mean (p_positive - y)^2, in [0, 1]. Multiclass: mean over images of the sum over
    classes of (p_c - [y == c])^2, in [0, 2] (the binary form counts one class, not both)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim == 1 or probs.shape[1] == 2:
        p = probs if probs.ndim == 1 else probs[:, 1]
        loss = (p - (labels == 1)) ** 2
    else:
        loss = ((probs - (labels[:, None] == np.arange(probs.shape[1]))) ** 2).sum(axis=1)
    w, single = as_weights(weights, len(loss))
    return _out(_divide(w @ loss, w.sum(axis=1)), single)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list]:
    """The reliability diagram: per bin its edges, mean confidence, observed frequency and
    count (mean and frequency None for an empty bin)."""
    confidence, outcome = _confidence_outcome(probs, labels)
    index = _bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    out_sum = np.bincount(index, weights=outcome, minlength=n_bins)

    def per_bin(total: np.ndarray) -> list[float | None]:
        return [float(t / c) if c else None for t, c in zip(total, count)]

    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "mean_predicted": per_bin(conf_sum),
        "observed": per_bin(out_sum),
        "count": count.tolist(),
    }


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _as_two_column(logits: np.ndarray) -> np.ndarray:
    # A single binary logit z is the two-class logit pair (0, z): softmax of it is sigmoid(z).
    logits = np.asarray(logits, dtype=np.float64)
    return np.stack([np.zeros_like(logits), logits], axis=1) if logits.ndim == 1 else logits


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities of ``logits / T``: softmax (N, C) for (N, C) logits, sigmoid (N,) for (N,)."""
    probs = np.exp(_log_softmax(_as_two_column(logits) / temperature))
    return probs[:, 1] if np.ndim(logits) == 1 else probs


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    return float(-_log_softmax(logits / temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the validation NLL of ``softmax(logits / T)``: NLL is convex in 1/T,
    hence unimodal in log T, so a golden-section search on log T within the bounds finds it
    without gradients or scipy (a result at a bound: the optimum lies beyond it)."""
    z, y = _as_two_column(logits), np.asarray(labels).astype(np.int64)
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one validation image")
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    while hi - lo > 1e-6:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def calibrated_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, str | None]:
    """``fit_temperature``, or 1.0 and the reason when the validation outputs cannot determine T:
    a split with images of one class only, or an optimum at a bound (perfectly separated or
    uninformative logits drive T to 0 or infinity; the bound is then no estimate)."""
    labels = np.asarray(labels).astype(np.int64)
    classes = len(np.unique(labels))
    if classes < 2:
        return 1.0, (f"the validation split has {len(labels)} image(s) of {classes} class(es): a temperature "
                     "cannot be fitted on it; probabilities are not rescaled (temperature 1)")
    temperature = fit_temperature(logits, labels)
    if min(abs(math.log(temperature / b)) for b in TEMPERATURE_BOUNDS) < 1e-3:
        return 1.0, (f"the temperature fitted on validation ran to its bound {temperature:.3g} (the optimum lies "
                     "beyond it: validation is perfectly separated or uninformative); probabilities are not "
                     "rescaled (temperature 1)")
    return temperature, None
