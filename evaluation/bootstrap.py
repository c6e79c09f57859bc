"""Patient-level (cluster) bootstrap intervals (README, "95% intervals").

Patients are resampled with replacement, each with all of their images (resampling the top level
of hierarchical data: Davison & Hinkley 1997, sec. 3.8). A resample is a vector of integer image
weights, so a statistic is any ``weights (B, N) -> {name: values (B,)}`` (evaluation.metrics),
evaluated for a chunk of resamples at once; the estimate is the statistic at weights all 1. BCa
by default (Efron 1987, acceleration from a leave-one-PATIENT-out jackknife): the figures are
bounded and skewed near 1, where the percentile interval misses more often on one side
(coverage measured by benchmarks/bootstrap_coverage.py: benchmarks/README.md). Where the
bootstrap collapses, the interval comes from evaluation/binomial.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from evaluation.binomial import NOT_ESTIMABLE, collapsed, where_collapsed

Statistic = Callable[[np.ndarray], Mapping[str, np.ndarray]]
Statistics = Statistic | Mapping[str, Callable[[np.ndarray], np.ndarray]]  # one function, or one per name
# One chunk of resamples holds at most this many weights (float64: 32 MiB), whatever N is.
CHUNK_ELEMENTS = 1 << 22
# BCa's jackknife costs one evaluation per patient; beyond this many, groups of patients.
MAX_JACKKNIFE_GROUPS = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval: ``n_dropped`` resamples had the statistic undefined (NaN,
    left out); ``method`` is ``bca``, ``percentile`` or one of evaluation.binomial's (no resamples)."""

    estimate: float
    low: float
    high: float
    n_resamples: int = 0
    n_dropped: int = 0
    method: str = "bca"
    n_eff: float | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-ready: NaN (undefined) becomes None."""
        return {
            "estimate": _finite_or_none(self.estimate),
            "ci_low": _finite_or_none(self.low),
            "ci_high": _finite_or_none(self.high),
            "n_resamples": self.n_resamples,
            "n_dropped": self.n_dropped,
            "method": self.method,
            "n_eff": None if self.n_eff is None else round(self.n_eff, 2),
        }


def method_label(method: str, n_eff: float | None) -> str:
    """The method as a reader sees it: ``bca`` or ``clopper-pearson (n_eff=7.6)``."""
    if method == NOT_ESTIMABLE:
        return "not estimable: bootstrap collapsed"
    return method if n_eff is None else f"{method} (n_eff={n_eff:.1f})"


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def patient_index(n_images: int, patient_ids: np.ndarray | list | None) -> np.ndarray:
    """Integer patient index 0..P-1 per image; each image its own patient when ids are None."""
    if patient_ids is None:
        return np.arange(n_images)
    ids = np.asarray(patient_ids)
    if ids.shape != (n_images,):
        raise ValueError(f"patient_ids must have one entry per image ({n_images}); got shape {ids.shape}")
    return np.unique(ids, return_inverse=True)[1].reshape(-1)


def resample_weights(patient: np.ndarray, n_resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Chunks of image weights (b, N): each row draws P patients with replacement from P."""
    n_patients = int(patient.max()) + 1
    chunk = max(1, CHUNK_ELEMENTS // max(len(patient), n_patients))
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        drawn = rng.integers(0, n_patients, size=(b, n_patients))
        flat = (np.arange(b)[:, None] * n_patients + drawn).ravel()
        counts = np.bincount(flat, minlength=b * n_patients).reshape(b, n_patients)
        yield counts[:, patient].astype(np.float64)


def _as_statistic(statistics: Statistics) -> Statistic:
    if isinstance(statistics, Mapping):
        return lambda w: {name: f(w) for name, f in statistics.items()}
    return statistics


def _evaluate(statistic: Statistic, chunks: Iterator[np.ndarray]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for w in chunks:
        for name, values in statistic(w).items():
            parts.setdefault(name, []).append(np.asarray(values, dtype=np.float64).reshape(len(w)))
    return {name: np.concatenate(v) for name, v in parts.items()}


def bootstrap_samples(
    statistics: Statistics,
    n_images: int,
    patient_ids: np.ndarray | list | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The bootstrap distribution: each statistic's value (n_resamples,) per resample, NaN kept."""
    patient = patient_index(n_images, patient_ids)
    rng = np.random.default_rng(seed)
    return _evaluate(_as_statistic(statistics), resample_weights(patient, n_resamples, rng))


def jackknife_samples(
    statistics: Statistics,
    n_images: int,
    patient_ids: np.ndarray | list | None = None,
    *,
    max_groups: int = MAX_JACKKNIFE_GROUPS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each statistic with one patient left out at a time: (P,) values, for the BCa acceleration.
    Above ``max_groups`` patients, seeded random groups of them: the acceleration is a ratio of
    sums, which grouping leaves unbiased, and the cost stays at ``max_groups`` evaluations."""
    group = patient_index(n_images, patient_ids)
    n_groups = int(group.max()) + 1
    if n_groups > max_groups:
        group = np.random.default_rng(seed).permutation(n_groups)[group] % max_groups
        n_groups = max_groups
    chunk = max(1, CHUNK_ELEMENTS // n_images)
    chunks = ((group[None, :] != np.arange(s, min(s + chunk, n_groups))[:, None]).astype(np.float64)
              for s in range(0, n_groups, chunk))
    return _evaluate(_as_statistic(statistics), chunks)


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The (1-confidence)/2 and (1+confidence)/2 quantiles of the finite resample values."""
    ok = samples[np.isfinite(samples)]
    if not len(ok):
        return np.nan, np.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(ok, [alpha, 1 - alpha])
    return float(low), float(high)


def bca_interval(
    samples: np.ndarray, estimate: float, jackknife: np.ndarray, confidence: float = 0.95
) -> tuple[float, float]:
    """BCa interval (Efron & Tibshirani 1993, sec. 14.3): percentile levels shifted by the
    median bias z0 of the resamples and the acceleration a (skewness of the jackknife)."""
    ok = samples[np.isfinite(samples)]
    if not len(ok) or not np.isfinite(estimate):
        return np.nan, np.nan
    normal = NormalDist()
    # Resamples equal to the estimate count one half, so that a discrete statistic sitting on
    # the estimate is not read as biased.
    below = (np.sum(ok < estimate) + 0.5 * np.sum(ok == estimate)) / len(ok)
    below = min(max(below, 0.5 / len(ok)), 1 - 0.5 / len(ok))
    z0 = normal.inv_cdf(below)
    jack = jackknife[np.isfinite(jackknife)]
    d = jack.mean() - jack if len(jack) else np.zeros(1)
    denom = 6 * np.sum(d**2) ** 1.5
    a = float(np.sum(d**3) / denom) if denom > 0 else 0.0
    levels = []
    for z in (normal.inv_cdf((1 - confidence) / 2), normal.inv_cdf((1 + confidence) / 2)):
        shrink = 1 - a * (z0 + z)
        # shrink -> 0+ sends the level to 0 or 1; past 0 the formula has no meaning: keep the limit
        levels.append(normal.cdf(z0 + (z0 + z) / shrink) if shrink > 0 else float(z0 + z > 0))
    low, high = np.quantile(ok, levels)
    return float(low), float(high)


def cluster_bootstrap(
    statistics: Statistics,
    n_images: int,
    patient_ids: np.ndarray | list | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    method: Literal["bca", "percentile"] = "bca",
    proportions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Interval]:
    """Estimate and ``confidence`` interval of each statistic by resampling patients (None: each
    image its own patient). 2000 resamples keep the Monte Carlo error of a 95% endpoint well below
    the sampling error of a few hundred patients. ``proportions`` (evaluation.metrics.
    proportion_outcomes) switches on evaluation.binomial's intervals where the bootstrap collapses.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca'; got {method!r}")
    statistic = _as_statistic(statistics)
    estimates = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in statistic(np.ones((1, n_images))).items()}
    samples = bootstrap_samples(statistic, n_images, patient_ids, n_resamples=n_resamples, seed=seed)
    jackknife = jackknife_samples(statistic, n_images, patient_ids, seed=seed) if method == "bca" else {}
    patient = patient_index(n_images, patient_ids)
    out = {}
    for name, values in samples.items():
        if method == "bca":
            low, high = bca_interval(values, estimates[name], jackknife[name], confidence)
        else:
            low, high = percentile_interval(values, confidence)
        # given the task's outcomes (``proportions``), a collapsed figure gets an honest interval or none
        if proportions is not None and (low == high or collapsed(values, estimates[name], confidence)):
            low, high, how, n_eff = where_collapsed(name, estimates[name], proportions, patient, confidence)
            out[name] = Interval(estimates[name], low, high, method=how, n_eff=n_eff)
            continue
        n_ok = int(np.isfinite(values).sum())
        out[name] = Interval(
            estimates[name], low, high, n_resamples=n_ok, n_dropped=len(values) - n_ok, method=method
        )
    return out

