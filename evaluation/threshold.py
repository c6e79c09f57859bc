"""Operating points, chosen on VALIDATION and then frozen (on test they would fit its noise): the
``eval.threshold`` rules (README, "The threshold comes from validation"); the decision rule itself
is evaluation/decision.py.

Candidates are the distinct validation scores (each the lowest score called positive at that
threshold, so the validation sensitivity/specificity reported are exactly achieved) plus one just
above the highest (nobody called positive), so that every ``specificity:T`` has an answer. Ties
of the objective go to the candidate with the better other metric, and for ``youden`` to the
highest threshold (fewer positive calls): with ``sensitivity:T`` equal specificity means no
negative lies between two candidates, so the lower one only gains sensitivity; likewise for
specificity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from evaluation.metrics import confusion_counts, metrics_from_counts

FALLBACK = 0.5
ALLOWED = (
    "allowed: 'youden', 'sensitivity:T' (highest specificity with sensitivity >= T), "
    "'specificity:T' (highest sensitivity with specificity >= T), with T in (0, 1), "
    "or a fixed probability in (0, 1) such as 0.5"
)


@dataclass(frozen=True)
class ThresholdSpec:
    """A parsed ``eval.threshold``: the rule, its target (sensitivity/specificity/fixed value)."""

    kind: Literal["youden", "sensitivity", "specificity", "fixed"]
    target: float | None
    text: str


@dataclass(frozen=True)
class ThresholdChoice:
    """The operating point in use, how it was chosen, and what it achieved on validation.

    ``fallback`` is True when the rule could not be applied (validation holds one class only)
    and 0.5 was used instead; ``reason`` then says why, for the caller to warn loudly.
    """

    value: float
    rule: str
    fallback: bool = False
    reason: str | None = None
    val_sensitivity: float = math.nan
    val_specificity: float = math.nan

    def to_dict(self) -> dict:
        """JSON/checkpoint-ready (NaN -> None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict) -> ThresholdChoice:
        data = dict(data)
        for key in ("val_sensitivity", "val_specificity"):
            data[key] = math.nan if data.get(key) is None else float(data[key])
        return cls(**data)


def _in_unit_interval(x: float) -> bool:
    return math.isfinite(x) and 0 < x < 1


def parse_threshold(spec: str | float) -> ThresholdSpec:
    """``'youden'``, ``'sensitivity:0.9'``, ``'specificity:0.95'``, ``0.5`` or ``'0.5'``.

    Raises:
        ValueError: naming ``eval.threshold``, the value given and the allowed forms.
    """
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise ValueError(f"eval.threshold: got {spec!r}; {ALLOWED}")
    text = spec.strip().lower() if isinstance(spec, str) else repr(float(spec))
    if text == "youden":
        return ThresholdSpec("youden", None, text)
    name, sep, target = text.partition(":")
    if sep and name in ("sensitivity", "specificity"):
        try:
            value = float(target)
        except ValueError:
            raise ValueError(
                f"eval.threshold: got {spec!r}, target {target!r} is not a number; {ALLOWED}"
            ) from None
        if not _in_unit_interval(value):
            raise ValueError(f"eval.threshold: got {spec!r}, target {value} outside (0, 1); {ALLOWED}")
        return ThresholdSpec(name, value, text)  # type: ignore[arg-type]
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"eval.threshold: got {spec!r}; {ALLOWED}") from None
    if not _in_unit_interval(value):
        raise ValueError(f"eval.threshold: got {spec!r}, outside (0, 1); {ALLOWED}")
    return ThresholdSpec("fixed", value, text)


def _achieved(value: float, probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    m = metrics_from_counts(**confusion_counts(probs, labels, value))
    return m["sensitivity"], m["specificity"]


def choose_threshold(
    spec: ThresholdSpec | str | float, probs_pos: np.ndarray, labels: np.ndarray
) -> ThresholdChoice:
    """Apply the rule to validation positive-class probabilities ``probs_pos`` and 0/1 ``labels``."""
    spec = spec if isinstance(spec, ThresholdSpec) else parse_threshold(spec)
    probs = np.asarray(probs_pos, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if probs.shape != labels.shape:
        raise ValueError(f"probs_pos and labels differ in length: {probs.shape[0]} vs {labels.shape[0]}")
    if not np.isfinite(probs).all():
        raise ValueError(f"probs_pos holds {np.sum(~np.isfinite(probs))} non-finite values (NaN/inf)")
    if spec.kind == "fixed":
        return ThresholdChoice(spec.target, spec.text, False, None, *_achieved(spec.target, probs, labels))
    n_pos = int(np.sum(labels == 1))
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        reason = (
            f"validation split has {n_pos} positive and {n_neg} negative images: sensitivity and "
            f"specificity are undefined, so '{spec.text}' cannot choose a threshold; using {FALLBACK}"
        )
        return ThresholdChoice(FALLBACK, spec.text, True, reason, *_achieved(FALLBACK, probs, labels))
    candidates = np.unique(probs)
    candidates = np.r_[candidates, np.nextafter(candidates[-1], np.inf)]
    # Counts per candidate t: positives called (score >= t), negatives not called (score < t).
    tp = n_pos - np.searchsorted(np.sort(probs[labels == 1]), candidates, side="left")
    tn = np.searchsorted(np.sort(probs[labels != 1]), candidates, side="left")
    sens, spec_ = tp / n_pos, tn / n_neg
    if spec.kind == "youden":
        youden = tp * n_neg + tn * n_pos  # (J + 1) * n_pos * n_neg, in integers: ties are exact
        best = np.flatnonzero(youden == youden.max())[-1]  # highest of tied thresholds
    elif spec.kind == "sensitivity":
        ok = np.flatnonzero(sens >= spec.target)  # never empty: the lowest candidate calls everyone
        best = ok[np.lexsort((-candidates[ok], spec_[ok]))[-1]]  # max specificity, then lowest threshold
    else:
        ok = np.flatnonzero(spec_ >= spec.target)  # never empty: the added top candidate calls nobody
        best = ok[np.lexsort((candidates[ok], sens[ok]))[-1]]  # max sensitivity, then highest threshold
    return ThresholdChoice(
        float(candidates[best]), spec.text, False, None, float(sens[best]), float(spec_[best])
    )
