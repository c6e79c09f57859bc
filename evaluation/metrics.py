"""Weighted classification metrics, vectorised over many weightings at once.

``weights``: None (every image once), (N,) or (B, N), e.g. B bootstrap resamples as integer
counts per image, which give exactly the metric on the data with each image repeated that often:
one implementation serves the estimate and the bootstrap. The result is a float, or (B,) for
(B, N); NaN where a metric is undefined (no positives drawn...). Names follow
models/metric_names.py, plus ``ppv``, ``npv``; class 1 is positive, called at ``score >= threshold``.
"""

from __future__ import annotations

import numpy as np

from evaluation.decision import called_positive


def as_weights(weights: np.ndarray | None, n: int) -> tuple[np.ndarray, bool]:
    """(B, N) float64 weights, and whether the caller gave a single weighting (return scalars)."""
    if weights is None:
        return np.ones((1, n)), True
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[-1] != n or w.ndim not in (1, 2):
        raise ValueError(f"weights must have shape (N,) or (B, N) with N={n}; got {w.shape}")
    return (w[None, :], True) if w.ndim == 1 else (w, False)


def _out(values: np.ndarray, single: bool) -> np.ndarray | float:
    return float(values[0]) if single else values


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0: an undefined metric, never a silent 0."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _ranked_group_sums(
    scores: np.ndarray, labels: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight per distinct score, highest score first: (B, G) each.

    Sorting happens once per call (not per resample); tied scores are merged into one group so
    that ties count as half a concordant pair (AUROC) and as one threshold (AP, ROC).
    """
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ws = w[:, order]
    pos = ws * (labels[order] == 1)
    neg = ws - pos
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    if len(starts) < len(s):
        pos = np.add.reduceat(pos, starts, axis=1)
        neg = np.add.reduceat(neg, starts, axis=1)
    return pos, neg


def _auroc_from_groups(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    # Mann-Whitney: each (positive, negative) pair scores 1 if the positive ranks higher,
    # 0.5 if tied; = the trapezoidal area under the ROC curve. Pairs with the positive above:
    # n_pos * n_neg minus pairs with the negative at or above, minus half the tied pairs.
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    neg_at_or_above = np.cumsum(neg, axis=1)
    discordant = np.einsum("bg,bg->b", pos, neg_at_or_above) - 0.5 * np.einsum("bg,bg->b", pos, neg)
    return _divide(n_pos * n_neg - discordant, n_pos * n_neg)


def _ap_from_groups(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    # Step-wise sum of precision times recall increments over distinct thresholds, as
    # torchmetrics/sklearn average_precision (no interpolation). Where tp + fp == 0 no
    # positive has been passed yet (pos == 0 there), so the floor on the divisor is harmless.
    tp = np.cumsum(pos, axis=1)
    called = np.cumsum(neg, axis=1)
    called += tp
    np.maximum(called, 1e-300, out=called)
    np.divide(tp, called, out=tp)
    return _divide(np.einsum("bg,bg->b", pos, tp), pos.sum(axis=1))


def auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray | float:
    """Area under the ROC curve of ``scores`` for ``labels == 1``; ties count one half."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    w, single = as_weights(weights, len(scores))
    return _out(_auroc_from_groups(*_ranked_group_sums(scores, labels, w)), single)


def proportion_outcomes(
    probs: np.ndarray, labels: np.ndarray, threshold: float | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each figure that is a proportion (one count over another, so its interval may be exact) as two
    masks over images: (in its denominator, in its numerator), e.g. sensitivity: (label positive,
    called positive). Binary at ``threshold``; multiclass (threshold None): accuracy of the argmax."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    everyone = np.ones(len(labels), dtype=bool)
    if threshold is None:
        return {"acc": (everyone, probs.argmax(axis=1) == labels)}
    positive, called = labels == 1, called_positive(probs[:, 1], threshold)
    return {
        "sensitivity": (positive, called),
        "specificity": (~positive, ~called),
        "ppv": (called, positive),
        "npv": (~called, ~positive),
        "acc": (everyone, called == positive),
    }


def confusion_counts(
    scores: np.ndarray, labels: np.ndarray, threshold: float, weights: np.ndarray | None = None
) -> dict[str, np.ndarray | float]:
    """Weighted tp, fn, fp, tn at ``score >= threshold``: one matrix product for all four."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1
    w, single = as_weights(weights, len(scores))
    called = called_positive(scores, threshold)
    indicator = np.stack([labels & called, labels & ~called, ~labels & called, ~labels & ~called], axis=1)
    counts = w @ indicator.astype(np.float64)
    return {name: _out(counts[:, i], single) for i, name in enumerate(("tp", "fn", "fp", "tn"))}


def metrics_from_counts(tp, fn, fp, tn) -> dict[str, np.ndarray | float]:
    """Sensitivity, specificity, PPV, NPV, accuracy, balanced accuracy and F1 from counts."""
    tp, fn, fp, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fn, fp, tn))
    sens, spec = _divide(tp, tp + fn), _divide(tn, tn + fp)
    values = {
        "sensitivity": sens,
        "specificity": spec,
        "ppv": _divide(tp, tp + fp),
        "npv": _divide(tn, tn + fn),
        "acc": _divide(tp + tn, tp + fn + fp + tn),
        "balanced_acc": (sens + spec) / 2,
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }
    return {k: (float(v) if v.ndim == 0 else v) for k, v in values.items()}


def binary_metrics(
    scores: np.ndarray, labels: np.ndarray, threshold: float, weights: np.ndarray | None = None
) -> dict[str, np.ndarray | float]:
    """AUROC, average precision and ``metrics_from_counts`` at ``threshold``: one sort and one
    matrix product for all, handed to the bootstrap as ``partial(binary_metrics, scores, labels, t)``."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    w, single = as_weights(weights, len(scores))
    pos, neg = _ranked_group_sums(scores, labels, w)
    values = {"auroc": _auroc_from_groups(pos, neg), "average_precision": _ap_from_groups(pos, neg)}
    values.update(metrics_from_counts(**confusion_counts(scores, labels, threshold, w)))
    return {k: _out(v, single) for k, v in values.items()}


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """ROC points from (0, 0) to (1, 1), one per distinct score, highest first (as torchmetrics
    ``binary_roc``, whose first threshold is 1.0 where ours is +inf: nobody called positive)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    pos, neg = _ranked_group_sums(scores, labels, np.ones((1, len(scores))))
    tp, fp = np.r_[0.0, np.cumsum(pos[0])], np.r_[0.0, np.cumsum(neg[0])]
    thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
    return {"fpr": _divide(fp, fp[-1:]), "tpr": _divide(tp, tp[-1:]), "thresholds": thresholds}


def multiclass_metrics(
    probs: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, np.ndarray | float]:
    """One-vs-rest AUROC per class (``auroc/<c>``), their macro mean (``auroc``), accuracy and
    balanced accuracy (mean recall per class) of the argmax prediction.

    Macro AUROC and balanced accuracy are NaN when some class has no images (or, for AUROC,
    no other-class images) under a weighting: torchmetrics would average the remaining
    classes instead, which silently changes the quantity estimated inside a bootstrap.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n, c = probs.shape
    w, single = as_weights(weights, n)
    per_class = [_auroc_from_groups(*_ranked_group_sums(probs[:, k], labels == k, w)) for k in range(c)]
    values = {f"auroc/{k}": v for k, v in enumerate(per_class)}
    values["auroc"] = np.mean(per_class, axis=0)
    predicted = probs.argmax(axis=1)
    onehot = labels[:, None] == np.arange(c)
    counts = w @ np.concatenate([onehot, onehot & (predicted == labels)[:, None]], axis=1).astype(np.float64)
    recall = _divide(counts[:, c:], counts[:, :c])
    values["balanced_acc"] = recall.mean(axis=1)
    values["acc"] = _divide(counts[:, c:].sum(axis=1), w.sum(axis=1))
    return {k: _out(v, single) for k, v in values.items()}
