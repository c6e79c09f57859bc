"""Intervals that never claim certainty (evaluation/binomial.py, the exact fallback in
evaluation/bootstrap.py) and the patient-level operating point (evaluation/patients.py).
numpy only, fast: coverage is computed exactly where it can be (unclustered: a sum over the
binomial outcomes), by a small simulation where it cannot (clustered images)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from conftest import ROOT

from evaluation import (
    ThresholdChoice,
    build_report,
    choose_patient_threshold,
    choose_threshold,
    format_table,
    summary_metrics,
)
from evaluation.binomial import beta_cdf, clopper_pearson, clustered_clopper_pearson, effective_sample_size
from evaluation.bootstrap import cluster_bootstrap
from evaluation.metrics import proportion_outcomes


def proportion(events: np.ndarray):
    """The statistic events / trials under bootstrap weights (every image is a trial)."""
    return {"p": lambda w: (w @ events) / w.sum(axis=1)}


def report_interval(events: np.ndarray, patient: np.ndarray | None, *, n_resamples: int = 200, seed: int = 0):
    """The interval the report gives a proportion: BCa, exact where the bootstrap collapses."""
    masks = {"p": (np.ones(len(events), dtype=bool), events.astype(bool))}
    return cluster_bootstrap(
        proportion(events.astype(float)), len(events), patient, n_resamples=n_resamples, seed=seed, proportions=masks
    )["p"]


# --- the exact interval -------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "p"), [(13, 4, 0.3), (8, 8, 0.9), (20, 1, 0.02), (50, 37, 0.71)])
def test_beta_cdf_is_the_binomial_tail(n, k, p):
    tail = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))  # P(X >= k)
    assert beta_cdf(p, k, n - k + 1) == pytest.approx(tail, rel=1e-10, abs=1e-15)


def test_eight_of_eight_is_compatible_with_63_percent():
    low, high = clopper_pearson(8, 8)
    assert low == pytest.approx(0.025 ** (1 / 8), abs=1e-9) and high == 1.0  # 0.631
    assert clopper_pearson(0, 8) == pytest.approx((0.0, 1 - 0.025 ** (1 / 8)), abs=1e-9)
    assert clopper_pearson(5, 10) == pytest.approx((0.18709, 0.81291), abs=1e-5)  # published table value


def test_effective_sample_size_counts_patients_when_their_images_agree():
    everyone = np.ones(16, dtype=bool)
    one_each = np.arange(16)
    assert effective_sample_size(everyone, np.ones(16), one_each) == 16  # unclustered: N
    pairs = np.arange(16) // 2
    assert effective_sample_size(everyone, np.ones(16), pairs) == 8  # all agree: ICC 1 assumed
    agree_within = np.repeat([1, 0, 1, 1, 0, 1, 1, 1], 2)  # p in (0, 1), a patient's two images agree
    assert effective_sample_size(everyone, agree_within, pairs) == pytest.approx(8)
    uneven = np.repeat(np.arange(3), [1, 1, 4])  # Kish: (sum m)^2 / sum m^2 = 36 / 18
    assert effective_sample_size(np.ones(6, dtype=bool), np.ones(6), uneven) == pytest.approx(2.0)


def test_report_interval_of_eight_of_eight_patients_is_not_a_point():
    for patient in (None, np.arange(16) // 2):  # 8 patients, one image each or two that agree
        events = np.ones(8 if patient is None else 16)
        iv = report_interval(events, patient)
        assert iv.method == "clopper-pearson" and iv.n_eff == pytest.approx(8)
        assert (iv.estimate, iv.high) == (1.0, 1.0) and iv.low == pytest.approx(0.631, abs=5e-4)
        assert iv.to_dict()["method"] == "clopper-pearson"


# --- coverage -----------------------------------------------------------------------------------


def exact_coverage(p: float, n: int) -> tuple[float, float]:
    """Coverage of the report's interval and of BCa alone for k ~ Binomial(n, p), k = 0..n,
    one image per patient: the sum over outcomes, no Monte Carlo error in the weights."""
    covered = np.zeros(2)
    for k in range(n + 1):
        weight = math.comb(n, k) * p**k * (1 - p) ** (n - k)
        events = np.r_[np.ones(k), np.zeros(n - k)]
        new = report_interval(events, None)
        old = cluster_bootstrap(proportion(events), n, None, n_resamples=200, seed=0)["p"]
        covered += weight * np.array([new.low <= p <= new.high, old.low <= p <= old.high])
    return float(covered[0]), float(covered[1])


@pytest.mark.parametrize(("p", "n"), [(0.97, 8), (0.99, 12), (0.95, 20), (0.02, 10), (0.0, 8), (1.0, 8)])
def test_coverage_near_0_and_1_without_clusters(p, n):
    # p = 0.97, n = 8: 8 of 8 in 78% of samples; p = 0.02, n = 10: 0 of 10 in 82%.
    new, old = exact_coverage(p, n)
    assert new >= 0.93, (p, n, new)
    if 0 < p < 1:
        assert old < 0.85  # what the bootstrap alone gives: the point 1.000 - 1.000 (or 0 - 0)


def test_coverage_near_1_with_clustered_images():
    # 10 positive patients with 2-4 images each; patient-level success probability Beta with mean
    # 0.97 and intra-class correlation 0.5: failures come in patients, not in single images.
    rng = np.random.default_rng(5)
    truth, rho, hits, old_hits, exact = 0.97, 0.5, [], [], []
    a, b = truth * (1 / rho - 1), (1 - truth) * (1 / rho - 1)
    for i in range(150):
        m = rng.integers(2, 5, 10)
        patient = np.repeat(np.arange(10), m)
        events = (rng.random(len(patient)) < rng.beta(a, b, 10)[patient]).astype(float)
        new = report_interval(events, patient, n_resamples=100, seed=i)
        old = cluster_bootstrap(proportion(events), len(events), patient, n_resamples=100, seed=i)["p"]
        hits.append(new.low <= truth <= new.high)
        old_hits.append(old.low <= truth <= old.high)
        exact.append(new.method == "clopper-pearson")
    assert np.mean(exact) > 0.5  # the all-agree samples dominate: the case this is about
    assert np.mean(hits) >= 0.93 and np.mean(old_hits) < 0.6, (np.mean(hits), np.mean(old_hits))


# --- the report ---------------------------------------------------------------------------------


def bilateral(seed: int, n_patients: int = 30):
    """Two images per patient; a diseased patient has ONE diseased side (the other looks normal)."""
    rng = np.random.default_rng(seed)
    diseased = np.arange(n_patients) < n_patients // 3
    side = np.zeros(2 * n_patients, dtype=int)
    side[0::2] = diseased  # the first image of each diseased patient
    p = np.clip(np.where(side == 1, 0.8, 0.15) + rng.normal(0, 0.05, len(side)), 0.01, 0.99)
    ids = np.repeat([f"MRN{7000 + i}" for i in range(n_patients)], 2)
    return np.stack([1 - p, p], axis=1), side, ids


def test_bilateral_patients_are_not_diluted_below_the_image_threshold():
    # The old patient section (mean of the two sides, the image-level threshold) found none of
    # the diseased patients here: (0.8 + 0.15) / 2 < the image threshold of about 0.7.
    (val_p, val_y, val_ids), (test_p, test_y, test_ids) = bilateral(1), bilateral(2)
    choice = choose_threshold("youden", val_p[:, 1], val_y)
    report = build_report(test_p, test_y, test_ids, ["normal", "abnormal"], choice, n_resamples=100)
    assert report["metrics"]["sensitivity"]["estimate"] == 1.0
    assert report["patient_level"]["aggregation"] == "max"  # agrees with "positive when any image is"
    assert report["patient_level"]["metrics"]["sensitivity"]["estimate"] == 1.0
    old = build_report(test_p, test_y, test_ids, ["normal", "abnormal"], choice, n_resamples=50,
                       patient_aggregation="mean")
    assert old["patient_level"]["metrics"]["sensitivity"]["estimate"] == 0.0  # the defect, with mean
    # mean aggregation works too once its threshold is chosen on validation PATIENTS
    patients = choose_patient_threshold("youden", val_p[:, 1], val_y, val_ids, "mean")
    assert patients.value < choice.value
    mean = build_report(test_p, test_y, test_ids, ["normal", "abnormal"], choice, n_resamples=100,
                        patient_aggregation="mean", patient_threshold=patients)
    section = mean["patient_level"]
    assert section["metrics"]["sensitivity"]["estimate"] >= 0.8  # youden's cut sits at val's lowest
    assert section["threshold"]["value"] == patients.value
    assert section["threshold_note"] == "rule youden chosen on validation patients"
    assert summary_metrics(mean)["test/patient/threshold"] == patients.value
    table = format_table(mean)
    assert "patient level (mean of each patient's images; threshold" in table and "validation patients" in table


def test_report_names_the_method_of_every_interval():
    (val_p, val_y, _), (test_p, test_y, test_ids) = bilateral(1), bilateral(2)
    report = build_report(test_p, test_y, test_ids, ["normal", "abnormal"], choose_threshold("youden", val_p[:, 1], val_y),
                          n_resamples=100)
    for section in (report, report["patient_level"]):
        figures = section["metrics"]
        # 10 of 10 diseased patients found: exact, at 10 patients (their other side is not in it)
        assert figures["sensitivity"]["method"] == "clopper-pearson" and figures["sensitivity"]["n_eff"] == 10
        assert figures["sensitivity"]["ci_low"] == pytest.approx(clopper_pearson(10, 10)[0])
        # AUROC 1 too (every diseased side outranks every normal one): exact, 10 disjoint pairs
        assert figures["auroc"]["method"] == "exact-pairs" and figures["auroc"]["n_eff"] == 10
        assert figures["auroc"]["ci_low"] == pytest.approx(clopper_pearson(10, 10)[0])
    table = format_table(report)
    assert "clopper-pearson (n_eff=10.0)" in table and "bca" in table
    assert "MRN" not in json.dumps(report) + table


def test_every_proportion_has_its_counts_and_multiclass_accuracy_too():
    probs, labels, _ = bilateral(4)
    outcomes = proportion_outcomes(probs, labels, 0.5)
    assert tuple(outcomes) == ("sensitivity", "specificity", "ppv", "npv", "acc")
    counts = {"sensitivity": (labels == 1), "ppv": probs[:, 1] >= 0.5, "acc": np.ones(len(labels), dtype=bool)}
    for name, trials in counts.items():
        np.testing.assert_array_equal(outcomes[name][0], trials)
    perfect = np.eye(3)[np.arange(12) % 3] * 0.7 + 0.1  # every argmax right: accuracy 12 of 12
    report = build_report(perfect, np.arange(12) % 3, np.arange(12) // 2, ["a", "b", "c"], None, n_resamples=50)
    acc = report["metrics"]["acc"]
    assert acc["method"] == "clopper-pearson" and acc["n_eff"] == 6 and acc["ci_low"] == pytest.approx(0.025 ** (1 / 6))


def test_without_a_patient_threshold_the_report_says_the_image_one_is_used():
    probs, labels, ids = bilateral(3)
    report = build_report(probs, labels, ids, ["normal", "abnormal"], ThresholdChoice(0.5, "0.5"), n_resamples=50)
    assert report["patient_level"]["threshold"]["value"] == 0.5
    assert "image-level threshold" in report["patient_level"]["threshold_note"]


def test_clustered_interval_is_wider_than_treating_images_as_patients():
    events = np.ones(24)
    low_clustered, _, n_eff = clustered_clopper_pearson(np.ones(24, dtype=bool), events, np.arange(24) // 3)
    low_images, _, _ = clustered_clopper_pearson(np.ones(24, dtype=bool), events, np.arange(24))
    assert n_eff == 8 and low_clustered == pytest.approx(0.025 ** (1 / 8)) and low_images > 0.85


def test_small_cohort_benchmark_runs_with_the_tiniest_settings(capsys):
    spec = importlib.util.spec_from_file_location("bootstrap_coverage", ROOT / "benchmarks" / "bootstrap_coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--small", "--small-datasets", "2", "--resamples", "30"])
    assert len(result["small"]) == 2 * 3 * 3 and "lowest coverage" in capsys.readouterr().out
    assert module.patient_sensitivity(module.cut_for_patient_sensitivity(0.97, 1.19, 0.5), 1.19, 0.5) == (
        pytest.approx(0.97, abs=1e-6)
    )


def test_html_table_and_caption_name_the_method_and_the_patient_threshold():
    # sweeps/analysis/heldout.py (the HTML report) reads test_report.json as written
    from sweeps.analysis.heldout import caption, ci_rows

    (val_p, val_y, val_ids), (test_p, test_y, test_ids) = bilateral(1), bilateral(2)
    report = build_report(test_p, test_y, test_ids, ["normal", "abnormal"], choose_threshold("youden", val_p[:, 1], val_y),
                          n_resamples=50, patient_threshold=choose_patient_threshold("youden", val_p[:, 1], val_y, val_ids))
    rows = {row[0]: row for row in ci_rows(json.loads(json.dumps(report)))}
    assert rows["figure"][3] == "method" and rows["ece"][3] == "bca"
    assert rows["auroc"][3] == "exact-pairs (n_eff=10.0)"  # AUROC 1: not a point interval labelled bca
    assert rows["patient: sensitivity"][2:] == ["0.692 – 1.000", "clopper-pearson (n_eff=10.0)"]
    assert "Patient level: max of each patient's images" in caption(report) and "validation patients" in caption(report)
    # the caption says what each method used means (and only those used)
    assert "exact-pairs: AUROC at 0 or 1" in caption(report) and "clopper-pearson: exact" in caption(report)
    assert rows["average_precision"][2:] == ["", "not estimable: bootstrap collapsed"]
    assert "not-estimable: no interval: the bootstrap collapsed" in caption(report)


def _separated(n_pos: int, n_neg: int, images_per_patient: int = 1):
    """Every positive image scores above every negative one; the threshold separates them."""
    scores = np.r_[np.linspace(0.7, 0.95, n_pos), np.linspace(0.05, 0.4, n_neg)]
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    ids = np.repeat(np.arange((n_pos + n_neg) // images_per_patient), images_per_patient)
    return np.stack([1 - scores, scores], axis=1), labels, ids


def test_auroc_and_f1_at_one_get_an_honest_interval_not_a_point():
    """The old report printed AUROC 1.000 (1.000 - 1.000) bca, F1 likewise: a point, as if certain."""
    probs, labels, ids = _separated(8, 30)
    report = build_report(probs, labels, ids, ["normal", "abnormal"], ThresholdChoice(0.5, "0.5"), n_resamples=200)
    m = report["metrics"]
    assert m["auroc"]["estimate"] == 1.0 and m["auroc"]["method"] == "exact-pairs" and m["auroc"]["n_eff"] == 8
    # 8 independent pairs all ordered right: A^8 >= 2.5% only for A >= 0.631
    assert m["auroc"]["ci_low"] == pytest.approx(0.025 ** (1 / 8)) and m["auroc"]["ci_high"] == 1.0
    sens_low, ppv_low = clopper_pearson(8, 8, 0.975)[0], clopper_pearson(8, 8, 0.975)[0]
    spec_low = clopper_pearson(30, 30, 0.975)[0]
    assert m["f1"]["method"] == "exact-bonferroni"
    assert m["f1"]["ci_low"] == pytest.approx(2 * sens_low * ppv_low / (sens_low + ppv_low)) and m["f1"]["ci_high"] == 1
    assert m["balanced_acc"]["ci_low"] == pytest.approx((sens_low + spec_low) / 2)
    # average precision has no known exact interval: none, said so, not a point
    ap = m["average_precision"]
    assert ap["method"] == "not-estimable" and ap["ci_low"] is None and ap["estimate"] == 1.0
    table = format_table(report)
    assert "exact-pairs (n_eff=8.0)" in table and "not estimable: bootstrap collapsed" in table
    assert math.isnan(summary_metrics(report)["test/average_precision_ci_low"])  # NaN: publish_report logs no point
    # two images per patient: the pairs are counted in patients
    clustered = build_report(*_separated(8, 30, images_per_patient=2), ["normal", "abnormal"],
                             ThresholdChoice(0.5, "0.5"), n_resamples=100)
    assert clustered["metrics"]["auroc"]["n_eff"] == 4
    assert clustered["metrics"]["auroc"]["ci_low"] == pytest.approx(0.025 ** (1 / 4))


def test_auroc_intervals_cover_a_true_auroc_near_one_on_small_cohorts():
    """Binormal scores with true AUROC 0.99, 8 positives and 30 negatives: in about half the data
    sets every positive outranks every negative. The old point interval covered 57% of 200 such
    data sets (measured); the exact-pairs interval there makes the coverage at least nominal."""
    from statistics import NormalDist

    truth, separation = 0.99, 2**0.5 * NormalDist().inv_cdf(0.99)
    rng = np.random.default_rng(0)
    covered, exact = [], 0
    for r in range(60):
        scores = np.r_[rng.normal(separation, 1, 8), rng.normal(0, 1, 30)]
        labels = np.r_[np.ones(8, int), np.zeros(30, int)]
        auroc = cluster_bootstrap(lambda w, s=scores, y=labels: {"auroc": _auroc(s, y, w)}, 38, n_resamples=100, seed=r,
                                  proportions=proportion_outcomes(np.stack([-scores, scores], 1), labels, 0.0))["auroc"]
        exact += auroc.method == "exact-pairs"
        covered.append(auroc.low <= truth <= auroc.high)
    assert exact >= 15 and np.mean(covered) >= 0.93, (exact, np.mean(covered))


def _auroc(scores, labels, weights):
    from evaluation.metrics import auroc

    return auroc(scores, labels, weights)
