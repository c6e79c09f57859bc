"""Patient-level (cluster) bootstrap confidence intervals.

Images of one patient are correlated (same bones, same scanner, same disease), so they are
not independent observations: resampling images treats a patient with four views as four
patients and gives intervals that are too narrow. We resample PATIENTS with replacement;
every image of a drawn patient comes along, as often as the patient was drawn (resampling
at the top level of hierarchical data: Davison & Hinkley 1997, sec. 3.8). Without patient
ids each image is its own patient, the ordinary bootstrap.

A resample is a vector of integer weights per image (how often its patient was drawn), so a
statistic is any function ``weights (B, N) -> {name: values (B,)}`` (see evaluation.metrics),
evaluated for a whole chunk of resamples at once. The estimate is the statistic at weights
all 1, i.e. on the data as observed.

Intervals: BCa (default: bias-corrected and accelerated, Efron 1987, with the acceleration
from a leave-one-PATIENT-out jackknife) or percentile. Metrics like AUROC and sensitivity are
bounded and their sampling distributions skewed near 0.8-1; the percentile interval then
misses more often on one side. benchmarks/bootstrap_coverage.py (simulated clustered cohorts,
known truth, 2000 data sets; see benchmarks/README.md) measured 95% BCa intervals covering
95.0% (AUROC) and 94.6% (sensitivity) with 150 patients, and 93.7% / 94.3% with 60 patients,
against 94.3% / 93.6% and 92.9% / 91.4% for the percentile interval.

Proportions at 0 or 1: a sample with 8 of 8 positives found gives 8 of 8 in every resample, so
any bootstrap interval is the point 1.000 - 1.000, while 8 of 8 is compatible with a true
sensitivity of 63%. For the proportions named in ``proportions`` (sensitivity, specificity,
PPV, NPV, accuracy: see ``evaluation.metrics.proportion_outcomes``) whose estimate is 0 or 1,
whose resamples (nearly) all agree, or whose bootstrap interval is a point, the interval is the
exact Clopper-Pearson one at the patient-clustered effective sample size (evaluation/binomial.py
says why that one), and the Interval says so (``method``, ``n_eff``). Measured by
benchmarks/bootstrap_coverage.py --small on true sensitivities of 0.95-0.99 with 8-20 positive
patients: coverage 97.8-100%, against 8-89% for BCa alone (benchmarks/README.md).

Figures that are not proportions (AUROC, F1, ...) get an honest interval or none where their
bootstrap collapses: evaluation/binomial.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from evaluation.binomial import NOT_ESTIMABLE, collapsed, where_collapsed

Statistic = Callable[[np.ndarray], Mapping[str, np.ndarray]]
# One chunk of resamples holds at most this many weights (float64: 32 MiB), whatever N is.
CHUNK_ELEMENTS = 1 << 22
# BCa's jackknife costs one evaluation per patient; beyond this many, groups of patients.
MAX_JACKKNIFE_GROUPS = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval.

    ``n_dropped`` resamples had the statistic undefined (NaN: e.g. no positive patient drawn)
    and are left out of the interval; many dropped resamples mean the interval describes only
    the resamples where the statistic exists, and the caller should say so. ``method`` names
    what gave the interval: ``bca``, ``percentile``, or ``clopper-pearson`` (exact, at the
    effective sample size ``n_eff``; no resamples used).
    """

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

    @property
    def label(self) -> str:
        """The method as a reader sees it: ``bca`` or ``clopper-pearson (n_eff=7.6)``."""
        return method_label(self.method, self.n_eff)


def method_label(method: str, n_eff: float | None) -> str:
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


def _as_statistic(statistics: Statistic | Mapping[str, Callable[[np.ndarray], np.ndarray]]) -> Statistic:
    """Accept either one function returning named values or a dict of single-valued functions."""
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
    statistics: Statistic | Mapping[str, Callable[[np.ndarray], np.ndarray]],
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
    statistics: Statistic | Mapping[str, Callable[[np.ndarray], np.ndarray]],
    n_images: int,
    patient_ids: np.ndarray | list | None = None,
    *,
    max_groups: int = MAX_JACKKNIFE_GROUPS,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Each statistic with one patient left out at a time: (P,) values, for the BCa acceleration.

    Above ``max_groups`` patients, random groups of patients (seeded) are left out together:
    the acceleration formula is a ratio of sums, which grouping leaves unbiased, and the cost
    stays at ``max_groups`` evaluations however large the data set.
    """
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
    statistics: Statistic | Mapping[str, Callable[[np.ndarray], np.ndarray]],
    n_images: int,
    patient_ids: np.ndarray | list | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    method: Literal["bca", "percentile"] = "bca",
    proportions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Interval]:
    """Estimate and ``confidence`` interval of each statistic by resampling patients.

    Args:
        statistics: ``weights (B, N) -> {name: (B,)}`` (e.g. ``functools.partial(
            binary_metrics, scores, labels, threshold)``), or ``{name: weights -> (B,)}``.
        n_images: N, the number of images the weights refer to.
        patient_ids: one id per image; None: every image is its own patient.
        n_resamples: resamples drawn; 2000 keeps the Monte Carlo error of a 95% percentile
            endpoint well below the sampling error of a few hundred patients.
        seed: the same seed, data and settings give the same intervals.
        method: ``bca`` (default; costs one extra evaluation per patient, at most
            ``MAX_JACKKNIFE_GROUPS``) or ``percentile``; see the module docstring for why.
        proportions: ``{name: (in denominator, in numerator)}``, masks over images, for the
            statistics that are proportions: exact where the bootstrap collapses (``collapsed``);
            the other statistics then get evaluation.binomial.where_collapsed's interval there.
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

