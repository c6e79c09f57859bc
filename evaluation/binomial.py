"""Intervals where the patient bootstrap collapses (README, "Never a point where the data allow
doubt"; coverage: tests/test_intervals.py, benchmarks/README.md).

Proportions: exact Clopper-Pearson (Clopper & Pearson 1934), at least nominal coverage for every
true proportion and n, where Wilson's and the bootstrap's fall short near 0 and 1 on small n
(Brown, Cai & DasGupta 2001, Statistical Science 16:101-133). Images of one patient agree, so the
interval is taken at the effective sample size n_eff = p(1-p) / V, V the variance of the ratio
estimate over patients (Kish 1965, sec. 8.2; Clopper-Pearson at n_eff: Korn & Graubard 1998,
Survey Methodology 24:193-201). At p = 0 or 1 the data cannot tell how strongly a patient's
images go together: the conservative intra-class correlation 1, n_eff = (sum m_i)^2 / sum m_i^2.
AUROC at 0 or 1: k disjoint (positive, negative) pairs all ordered alike have probability A^k,
so Clopper-Pearson k of k bounds A; k is the smaller class's n_eff, at most half the patients.
F1 and balanced accuracy increase in two proportions: the function of their exact intervals,
each at 1 - a/2 (Bonferroni). Anything else has no interval (``not-estimable``).

The beta quantile is a bisection on the regularised incomplete beta function (continued
fraction: Press et al., Numerical Recipes 3rd ed. 6.4), numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

EXACT = "clopper-pearson"
PAIRS, BONFERRONI, NOT_ESTIMABLE = "exact-pairs", "exact-bonferroni", "not-estimable"
# What each method other than the bootstrap's means, for a reader of the report.
METHOD_NOTES = {
    EXACT: "exact (Clopper-Pearson) at the patient-clustered effective sample size n_eff, where the "
           "bootstrap of a proportion collapses (an estimate of 0 or 1)",
    PAIRS: "AUROC at 0 or 1, where the bootstrap collapses: exact interval of n_eff disjoint "
           "(positive, negative) pairs, all ordered alike (a one-sided bound; the other end is the estimate)",
    BONFERRONI: "where the bootstrap collapses: F1 / balanced accuracy of the exact intervals of "
                "sensitivity and PPV / specificity, each at 97.5% (Bonferroni)",
    NOT_ESTIMABLE: "no interval: the bootstrap collapsed (every resample gave the same value) and no "
                   "exact interval is known for this figure; the estimate is not certain",
}
# Figures that are increasing functions of two proportions: (parts, how they combine).
_COMBINED = {"f1": (("sensitivity", "ppv"), lambda a, b: 2 * a * b / (a + b) if a + b > 0 else 0.0),
             "balanced_acc": (("sensitivity", "specificity"), lambda a, b: (a + b) / 2)}


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the continued fraction of I_x(a, b) (Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b), a, b > 0 (real)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; else use symmetry
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): bisection to double precision (the CDF is monotone)."""
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if beta_cdf(mid, a, b) < q else (low, mid)
    return 0.5 * (low + high)


def clopper_pearson(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Exact interval of a proportion, successes of n trials; both may be non-integer (n_eff)."""
    if not n > 0 or not 0 <= successes <= n:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else beta_ppf(alpha / 2, successes, n - successes + 1)
    high = 1.0 if successes == n else beta_ppf(1 - alpha / 2, successes + 1, n - successes)
    return low, high


def effective_sample_size(trials: np.ndarray, events: np.ndarray, patient: np.ndarray) -> float:
    """n_eff of the proportion events/trials (masks over images) grouped by ``patient`` (0..P-1)."""
    trials = np.asarray(trials, dtype=bool)
    m = np.bincount(patient[trials])
    y = np.bincount(patient[trials], weights=np.asarray(events, dtype=bool)[trials], minlength=len(m))
    y, m = y[m > 0], m[m > 0].astype(np.float64)
    n, k = m.sum(), len(m)
    if n == 0:
        return 0.0
    n_min = n * n / np.sum(m * m)  # intra-class correlation 1: each patient one trial, by weight
    p = y.sum() / n
    if p in (0.0, 1.0) or k < 2:
        return float(n_min)
    # Linearised variance of the ratio estimate over patients (with-replacement, k/(k-1)).
    variance = k / (k - 1) * np.sum((y - p * m) ** 2) / (n * n)
    n_eff = p * (1 - p) / variance if variance > 0 else n
    return float(min(max(n_eff, n_min), n))


def clustered_clopper_pearson(
    trials: np.ndarray, events: np.ndarray, patient: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(low, high, n_eff): Clopper-Pearson at the effective sample size of the clustered data."""
    trials = np.asarray(trials, dtype=bool)
    n = int(trials.sum())
    if n == 0:
        return math.nan, math.nan, 0.0
    p = float(np.sum(np.asarray(events, dtype=bool) & trials)) / n
    n_eff = effective_sample_size(trials, events, np.asarray(patient))
    low, high = clopper_pearson(p * n_eff, n_eff, confidence)
    return low, high, n_eff


def collapsed(samples: np.ndarray, estimate: float, confidence: float = 0.95) -> bool:
    """True where a bootstrap interval of a proportion cannot be trusted: the estimate is 0 or 1
    (every resample repeats it), or at least ``confidence`` of the finite resamples share one
    value (the interval can then be a point, whatever the truth)."""
    if estimate in (0.0, 1.0):
        return True
    ok = samples[np.isfinite(samples)]
    if not len(ok):
        return False
    return bool(np.unique(ok, return_counts=True)[1].max() >= confidence * len(ok))


def where_collapsed(name: str, estimate: float, proportions: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    patient: np.ndarray, confidence: float = 0.95) -> tuple[float, float, str, float | None]:
    """(low, high, method, n_eff) of a figure whose bootstrap collapsed (module docstring)."""
    if name in proportions:
        low, high, n_eff = clustered_clopper_pearson(*proportions[name], patient, confidence)
        return low, high, EXACT, n_eff
    if name == "auroc" and estimate in (0.0, 1.0) and {"sensitivity", "specificity"} <= set(proportions):
        positive, negative = proportions["sensitivity"][0], proportions["specificity"][0]
        k = min(effective_sample_size(positive, positive, patient), effective_sample_size(negative, negative, patient),
                len(np.unique(patient)) / 2)
        low, high = clopper_pearson(estimate * k, k, confidence)
        return low, high, PAIRS, k
    if name in _COMBINED and all(p in proportions for p in _COMBINED[name][0]):
        parts, combine = _COMBINED[name]
        level = 1 - (1 - confidence) / 2  # Bonferroni over the two parts
        (low_a, high_a, _), (low_b, high_b, _) = (clustered_clopper_pearson(*proportions[p], patient, level)
                                                  for p in parts)
        if all(np.isfinite((low_a, high_a, low_b, high_b))):
            return combine(low_a, low_b), combine(high_a, high_b), BONFERRONI, None
    return math.nan, math.nan, NOT_ESTIMABLE, None
