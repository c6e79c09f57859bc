"""Do the 95% intervals of evaluation/ cover the truth 95% of the time on clustered data?

Simulates data sets with known truth, like a small X-ray cohort: each patient has 2-4
images, a patient-level label (prevalence 0.3) and a random effect shared by all their
images (same bones, same scanner), so images of one patient are correlated:

    score = mu * label + patient_effect + image_noise,   patient_effect ~ N(0, var_patient),
                                                        image_noise ~ N(0, 1 - var_patient)

Truth, analytically: a positive and a negative image always belong to different patients,
so the image-level AUROC estimates P(S_pos > S_neg) = Phi(mu / sqrt(2)) (total variance 1);
the sensitivity at threshold t estimates P(S_pos >= t) = Phi(mu - t).

For each data set: the 95% interval of AUROC and of sensitivity at t by the patient-level
(cluster) bootstrap, percentile and BCa, and by the naive image-level bootstrap (what one
gets by ignoring patient ids). Prints coverage (with its Monte Carlo standard error), the
share of misses below/above, mean interval width, and the time for 2000 resamples of 5,000
images with AUROC and every threshold metric.

--small: the small cohorts where a sensitivity sits near 1 (true 0.95-0.99, 8-20 positive
patients, negatives at prevalence 0.3): image level (clustered: each patient 2-4 images, the
cut t = mu - Phi^-1(s) gives image-level sensitivity s) and patient level (a patient called
positive when any image is, the report's default; the cut solved so that the patient-level
truth is s, by quadrature over the patient effect). Per cell the report's intervals (BCa,
exact Clopper-Pearson where the bootstrap collapses: evaluation/bootstrap.py) beside the
old ones (BCa alone), on the same resamples.

    python benchmarks/bootstrap_coverage.py            # 2000 data sets x 150 patients: 2-3 min, one core
    python benchmarks/bootstrap_coverage.py --small    # 9 cells x 2 levels x 600 data sets: a few min
    python benchmarks/bootstrap_coverage.py --quick    # a few seconds
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # one core, as documented
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import NormalDist  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.bootstrap import (  # noqa: E402
    bca_interval,
    bootstrap_samples,
    cluster_bootstrap,
    jackknife_samples,
    percentile_interval,
)
from evaluation.metrics import (  # noqa: E402
    auroc,
    binary_metrics,
    confusion_counts,
    metrics_from_counts,
    proportion_outcomes,
)
from evaluation.patients import aggregate_patients  # noqa: E402

PREVALENCE = 0.3
METHODS = ("patient percentile", "patient BCa", "image percentile")
SMALL_SENSITIVITIES = (0.95, 0.97, 0.99)
SMALL_POSITIVES = (8, 12, 20)
_nodes, _weights = np.polynomial.hermite_e.hermegauss(80)  # weight exp(-x^2/2): N(0, 1)
GAUSS_HERMITE = (_nodes, _weights / _weights.sum())


def simulate(rng: np.random.Generator, n_patients: int, mu: float, var_patient: float, label=None):
    """Scores, labels and patient index of one cohort (at least 2 patients of each class),
    or of the patients' given labels."""
    while label is None:
        label = (rng.random(n_patients) < PREVALENCE).astype(np.int64)
        if not 2 <= label.sum() <= n_patients - 2:
            label = None
    n_images = rng.integers(2, 5, n_patients)
    patient = np.repeat(np.arange(n_patients), n_images)
    effect = rng.normal(0.0, np.sqrt(var_patient), n_patients)[patient]
    noise = rng.normal(0.0, np.sqrt(1.0 - var_patient), len(patient))
    return mu * label[patient] + effect + noise, label[patient], patient


def intervals(scores, labels, patient, threshold, n_resamples, seed) -> dict[str, dict[str, tuple]]:
    """{method: {metric: (low, high)}} for one data set; both patient methods share resamples."""
    stats = {
        "auroc": lambda w: auroc(scores, labels, w),
        "sensitivity": lambda w: metrics_from_counts(**confusion_counts(scores, labels, threshold, w))[
            "sensitivity"
        ],
    }
    n = len(scores)
    estimate = {k: float(f(np.ones((1, n)))[0]) for k, f in stats.items()}
    by_patient = bootstrap_samples(stats, n, patient, n_resamples=n_resamples, seed=seed)
    jack = jackknife_samples(stats, n, patient, seed=seed)
    by_image = bootstrap_samples(stats, n, None, n_resamples=n_resamples, seed=seed)
    return {
        "patient percentile": {k: percentile_interval(by_patient[k]) for k in stats},
        "patient BCa": {k: bca_interval(by_patient[k], estimate[k], jack[k]) for k in stats},
        "image percentile": {k: percentile_interval(by_image[k]) for k in stats},
        "estimate": {k: (estimate[k], estimate[k]) for k in stats},
    }


def timing(n_images: int, n_resamples: int, seed: int) -> dict[str, float]:
    """Seconds for the patient bootstrap of AUROC, AP and every threshold metric, per method."""
    rng = np.random.default_rng(seed)
    scores, labels, patient = simulate(rng, max(2, n_images // 2), 1.19, 0.5)  # 2-4 images each
    scores, labels, patient = scores[:n_images], labels[:n_images], patient[:n_images]
    seconds = {"patients": len(np.unique(patient))}
    for method in ("percentile", "bca"):
        start = time.perf_counter()
        cluster_bootstrap(functools.partial(binary_metrics, scores, labels, 0.35), len(scores), patient,
                          n_resamples=n_resamples, seed=seed, method=method)
        seconds[method] = time.perf_counter() - start
    return seconds


def patient_sensitivity(cut: float, mu: float, var_patient: float) -> float:
    """P(some image of a positive patient scores >= cut), 2-4 images equally likely: Gauss-Hermite
    quadrature over the patient effect (given it, the images are independent)."""
    nodes, weights = GAUSS_HERMITE
    normal = NormalDist()
    noise_sd = np.sqrt(1 - var_patient)
    below = np.array([normal.cdf((cut - mu - np.sqrt(var_patient) * e) / noise_sd) for e in nodes])
    return float(np.mean([weights @ (1 - below**m) for m in (2, 3, 4)]))


@functools.lru_cache
def cut_for_patient_sensitivity(target: float, mu: float, var_patient: float) -> float:
    low, high = mu - 10, mu + 10  # patient_sensitivity falls with the cut
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if patient_sensitivity(mid, mu, var_patient) > target else (low, mid)
    return (low + high) / 2


def small_cell(rng, args, level: str, truth: float, n_pos: int) -> dict[str, float]:
    """One cell: coverage of the report's interval and of BCa alone, share of exact intervals."""
    if level == "image":
        cut = args.mu - NormalDist().inv_cdf(truth)
    else:
        cut = cut_for_patient_sensitivity(truth, args.mu, args.var_patient)
    n_neg = round(n_pos * (1 - PREVALENCE) / PREVALENCE)
    label = np.r_[np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)]
    rows = []
    for i in range(args.small_datasets):
        scores, labels, patient = simulate(rng, len(label), args.mu, args.var_patient, label)
        probs = np.stack([1 - scores, scores], axis=1)  # only the order matters at a fixed cut
        if level == "patient":
            probs, labels = aggregate_patients(probs, labels, patient, "max")
            patient = np.arange(len(labels))

        def sensitivity(w, p=probs, y=labels):
            return metrics_from_counts(**confusion_counts(p[:, 1], y, cut, w))["sensitivity"]

        kw = dict(n_resamples=args.resamples, seed=args.seed + i)
        outcomes = proportion_outcomes(probs, labels, cut)
        new = cluster_bootstrap(
            {"sensitivity": sensitivity}, len(labels), patient, proportions=outcomes, **kw
        )
        old = cluster_bootstrap({"sensitivity": sensitivity}, len(labels), patient, **kw)
        new, old = new["sensitivity"], old["sensitivity"]
        rows.append([new.low <= truth <= new.high, old.low <= truth <= old.high, new.method != old.method,
                     new.low, new.high - new.low])
    report, bca, exact, low, width = np.mean(rows, axis=0)
    return {"report": report, "bca": bca, "exact_share": exact, "mean_low": low, "mean_width": width}


def small_cohorts(args) -> dict:
    """Coverage near sensitivity 1 with few positive patients: the report's method and BCa alone."""
    rng = np.random.default_rng(args.seed)
    print(f"\nsmall cohorts: {args.small_datasets} data sets per cell, {args.resamples} resamples, "
          f"2-4 images per patient, patient share of variance {args.var_patient}, seed {args.seed}")
    print(f"{'level':<8}{'truth':>6}{'pos':>5}{'report':>8}{'+-SE':>7}{'BCa alone':>10}"
          f"{'exact used':>11}{'mean low':>9}{'mean width':>11}")
    out = {}
    for level in ("image", "patient"):
        for truth in SMALL_SENSITIVITIES:
            for n_pos in SMALL_POSITIVES:
                c = out[(level, truth, n_pos)] = small_cell(rng, args, level, truth, n_pos)
                se = np.sqrt(c["report"] * (1 - c["report"]) / args.small_datasets)
                print(f"{level:<8}{truth:>6.2f}{n_pos:>5}{c['report']:>8.3f}{se:>7.3f}{c['bca']:>10.3f}"
                      f"{c['exact_share']:>11.2f}{c['mean_low']:>9.3f}{c['mean_width']:>11.3f}")
    print(f"lowest coverage of the report's intervals: {min(v['report'] for v in out.values()):.3f} "
          f"(target >= 0.93); BCa alone: {min(v['bca'] for v in out.values()):.3f}")
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mu", type=float, default=1.19, help="class separation; 1.19 -> true AUROC 0.80")
    parser.add_argument(
        "--var-patient", type=float, default=0.5, help="share of score variance shared by a patient"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.35, help="fixed cut; 0.35 -> true sensitivity 0.80"
    )
    parser.add_argument("--timing-images", type=int, default=5000)
    parser.add_argument("--timing-resamples", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="30 data sets, 200 resamples, 60 patients")
    parser.add_argument("--small", action="store_true", help="only the small cohorts near sensitivity 1")
    parser.add_argument("--small-datasets", type=int, default=600, help="data sets per small-cohort cell")
    args = parser.parse_args(argv)
    if args.small:
        return {"small": small_cohorts(args)}
    if args.quick:
        args.datasets, args.resamples, args.patients = 30, 200, 60
    normal = NormalDist()
    truth = {"auroc": normal.cdf(args.mu / np.sqrt(2)), "sensitivity": normal.cdf(args.mu - args.threshold)}
    print(f"{args.datasets} data sets x {args.patients} patients (2-4 images each, patient share of variance "
          f"{args.var_patient}), {args.resamples} resamples, seed {args.seed}")
    print(f"truth: AUROC {truth['auroc']:.4f}, sensitivity at {args.threshold} {truth['sensitivity']:.4f}")

    rng = np.random.default_rng(args.seed)
    results = {m: {k: [] for k in truth} for m in (*METHODS, "estimate")}
    start = time.perf_counter()
    for i in range(args.datasets):
        data = simulate(rng, args.patients, args.mu, args.var_patient)
        for method, per_metric in intervals(*data, args.threshold, args.resamples, args.seed + i).items():
            for k, bounds in per_metric.items():
                results[method][k].append(bounds)
    per_dataset = (time.perf_counter() - start) / max(args.datasets, 1)

    summary = {}
    header = f"{'metric':<12}{'interval':<20}{'coverage':>9}{'+-SE':>7}{'miss low':>10}{'miss high':>10}"
    print(f"\n{header}{'width':>8}")
    for k, true in truth.items():
        est = np.array(results["estimate"][k])[:, 0]
        for method in METHODS:
            b = np.array(results[method][k])
            low_miss = np.mean(b[:, 1] < true)  # the whole interval below the truth
            high_miss = np.mean(b[:, 0] > true)
            cover = 1 - low_miss - high_miss
            se = np.sqrt(cover * (1 - cover) / len(b))
            summary[(k, method)] = cover
            print(f"{k:<12}{method:<20}{cover:>9.3f}{se:>7.3f}{low_miss:>10.3f}{high_miss:>10.3f}"
                  f"{np.mean(b[:, 1] - b[:, 0]):>8.3f}")
        print(f"{k:<12}{'(mean estimate)':<20}{est.mean():>9.4f}   truth {true:.4f}, "
              f"SD of estimates {est.std():.4f}")
    print(f"\ntime per simulated data set: {per_dataset:.3f} s "
          f"(3 intervals x 2 metrics, {args.resamples} resamples, + jackknife)")
    seconds = timing(args.timing_images, args.timing_resamples, args.seed)
    print(f"time for {args.timing_resamples} resamples of {args.timing_images} images (AUROC, AP, "
          f"7 threshold metrics, patient bootstrap): percentile {seconds['percentile']:.2f} s, "
          f"BCa {seconds['bca']:.2f} s (+ jackknife over {seconds['patients']} patients)")
    return {"coverage": summary, "per_dataset_s": per_dataset, "timing_s": seconds}


if __name__ == "__main__":
    main()
