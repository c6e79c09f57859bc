"""evaluation/: thresholds chosen on validation, weighted metrics against torchmetrics, the
patient-level bootstrap against closed forms, calibration, and the report. numpy only, fast."""

from __future__ import annotations

import functools
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from torchmetrics.functional import classification as tmf

from evaluation import (
    ThresholdChoice,
    apply_temperature,
    brier_score,
    build_report,
    choose_threshold,
    expected_calibration_error,
    format_table,
    parse_threshold,
    reliability_bins,
    summary_metrics,
)
from evaluation.bootstrap import (
    bca_interval,
    bootstrap_samples,
    cluster_bootstrap,
    jackknife_samples,
    percentile_interval,
)
from evaluation.calibration import fit_temperature
from evaluation.metrics import auroc, binary_metrics, multiclass_metrics, roc_curve
from evaluation.patients import aggregate_patients


def binary_data(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=n) - 0.6)))
    return (np.round(s, 1) if ties else s), y


def t(x):
    return torch.tensor(np.asarray(x))


# --- thresholds ---------------------------------------------------------------------------------


def test_youden_picks_the_known_optimal_cut():
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.5, 0.7, 0.9])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # At 0.4 every positive is called and 3 of 4 negatives are not: J = 0.75, the unique maximum.
    choice = choose_threshold("youden", probs, labels)
    assert (choice.value, choice.val_sensitivity, choice.val_specificity) == (0.4, 1.0, 0.75)
    assert choice.rule == "youden" and not choice.fallback


def _brute_force(probs, labels, kind, target):
    """Every candidate threshold (each score, and above the top), the best by the rule's definition."""
    rows = []
    for cut in [*np.unique(probs), np.inf]:
        called = probs >= cut
        sens, spec = called[labels == 1].mean(), (~called[labels == 0]).mean()
        rows.append((sens, spec))
    if kind == "sensitivity":
        return max(spec for sens, spec in rows if sens >= target)
    return max(sens for sens, spec in rows if spec >= target)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "spec", ["sensitivity:0.9", "specificity:0.95", "sensitivity:0.75", "specificity:0.6"]
)
def test_target_rules_give_the_best_other_metric_by_brute_force(seed, spec):
    probs, labels = binary_data(seed, n=120, ties=seed == 2)
    kind, target = spec.split(":")
    choice = choose_threshold(spec, probs, labels)
    called = probs >= choice.value
    sens, spec_ = called[labels == 1].mean(), (~called[labels == 0]).mean()
    assert (sens, spec_) == (choice.val_sensitivity, choice.val_specificity)  # exactly achieved
    if kind == "sensitivity":
        assert sens >= float(target) and spec_ == _brute_force(probs, labels, kind, float(target))
    else:
        assert spec_ >= float(target) and sens == _brute_force(probs, labels, kind, float(target))
    assert choice.value in probs  # a validation score, not an interpolated value


def test_ties_in_the_objective_go_to_the_better_other_metric():
    # sensitivity >= 0.5 with specificity 1 is reached at 0.8 and (with more sensitivity) at 0.6.
    probs = np.array([0.1, 0.2, 0.6, 0.8, 0.9])
    labels = np.array([0, 0, 1, 1, 1])
    assert choose_threshold("sensitivity:0.5", probs, labels).value == 0.6
    # specificity >= 0.5 with sensitivity 1 is reached at 0.6 and (more specific) never higher
    assert choose_threshold("specificity:0.5", probs, labels).value == 0.6


@pytest.mark.parametrize("spec", [0.3, "0.3", " 0.3 "])
def test_fixed_threshold_is_returned_as_is(spec):
    probs, labels = binary_data(0)
    choice = choose_threshold(spec, probs, labels)
    assert choice.value == 0.3 and not choice.fallback
    assert choice.val_sensitivity == np.mean(probs[labels == 1] >= 0.3)


@pytest.mark.parametrize(
    "bad", ["sens:0.9", "sensitivity:1.5", "youdn", "-0.1", 2, "2", "specificity:0", True]
)
def test_bad_threshold_specs_raise_naming_the_option_and_the_value(bad):
    with pytest.raises(ValueError) as err:
        parse_threshold(bad)
    message = str(err.value)
    assert "eval.threshold" in message and repr(bad) in message
    assert "youden" in message and "sensitivity:T" in message and "(0, 1)" in message


def test_single_class_validation_falls_back_to_half_with_a_reason():
    probs = np.array([0.2, 0.7, 0.9])
    choice = choose_threshold("sensitivity:0.9", probs, np.zeros(3, dtype=int))
    assert choice.value == 0.5 and choice.fallback and choice.rule == "sensitivity:0.9"
    assert "0 positive" in choice.reason and "0.5" in choice.reason
    assert math.isnan(choice.val_sensitivity) and choice.val_specificity == 1 / 3


def test_threshold_choice_round_trips_through_json():
    choice = choose_threshold("youden", np.array([0.2, 0.7]), np.array([1, 1]))
    back = ThresholdChoice.from_dict(json.loads(json.dumps(choice.to_dict(), allow_nan=False)))
    assert back.value == choice.value and back.reason == choice.reason and math.isnan(back.val_specificity)


# --- weighted metrics against torchmetrics ------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_at_unit_weights_equal_torchmetrics(ties):
    probs, labels = binary_data(3, ties=ties)
    m = binary_metrics(probs, labels, 0.55)  # no score equals 0.55: torchmetrics calls > where we call >=
    # torchmetrics returns float32
    assert m["auroc"] == pytest.approx(float(tmf.binary_auroc(t(probs), t(labels))), abs=1e-6)
    assert m["average_precision"] == pytest.approx(
        float(tmf.binary_average_precision(t(probs), t(labels))), abs=1e-6
    )
    for name, fn in [("sensitivity", tmf.binary_recall), ("specificity", tmf.binary_specificity),
                     ("ppv", tmf.binary_precision), ("acc", tmf.binary_accuracy), ("f1", tmf.binary_f1_score),
                     ("npv", tmf.binary_negative_predictive_value)]:
        assert m[name] == pytest.approx(float(fn(t(probs), t(labels), threshold=0.55)), abs=1e-6), name
    assert m["balanced_acc"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)


def test_roc_curve_equals_torchmetrics_binary_roc():
    probs, labels = binary_data(4, ties=True)
    ours = roc_curve(probs, labels)
    fpr, tpr, thresholds = tmf.binary_roc(t(probs), t(labels))
    np.testing.assert_allclose(ours["fpr"], fpr.numpy(), atol=1e-7)
    np.testing.assert_allclose(ours["tpr"], tpr.numpy(), atol=1e-7)
    np.testing.assert_allclose(ours["thresholds"][1:], thresholds.numpy()[1:])


def test_multiclass_auroc_per_class_and_macro_equal_torchmetrics():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4), 400) + 0.3 * np.eye(4)[labels]
    probs /= probs.sum(axis=1, keepdims=True)
    m = multiclass_metrics(probs, labels)
    per_class = tmf.multiclass_auroc(t(probs), t(labels), 4, average=None).numpy()
    np.testing.assert_allclose([m[f"auroc/{k}"] for k in range(4)], per_class, atol=1e-6)
    assert m["auroc"] == pytest.approx(float(tmf.multiclass_auroc(t(probs), t(labels), 4)), abs=1e-6)
    assert m["balanced_acc"] == pytest.approx(
        float(tmf.multiclass_accuracy(t(probs), t(labels), 4, average="macro"))
    )
    assert m["acc"] == pytest.approx(float(tmf.multiclass_accuracy(t(probs), t(labels), 4, average="micro")))


def test_integer_weights_equal_the_metrics_on_explicitly_repeated_data():
    probs, labels = binary_data(6, n=200, ties=True)
    rng = np.random.default_rng(6)
    weights = rng.integers(0, 4, (3, 200))
    batch = binary_metrics(probs, labels, 0.5, weights)
    for row, w in enumerate(weights):
        rep = np.repeat(np.arange(200), w)
        single = binary_metrics(probs[rep], labels[rep], 0.5)
        for name, value in single.items():
            assert batch[name][row] == pytest.approx(value, abs=1e-12), name
        p2 = np.stack([1 - probs, probs], axis=1)
        assert expected_calibration_error(p2, labels, 15, w) == pytest.approx(
            expected_calibration_error(p2[rep], labels[rep])
        )
        assert brier_score(p2, labels, w) == pytest.approx(brier_score(p2[rep], labels[rep]))
    multi = rng.dirichlet(np.ones(3), 200)
    y3 = rng.integers(0, 3, 200)
    rep = np.repeat(np.arange(200), weights[0])
    for name, value in multiclass_metrics(multi[rep], y3[rep]).items():
        assert multiclass_metrics(multi, y3, weights[0])[name] == pytest.approx(value, abs=1e-12), name


def test_undefined_metric_is_nan_not_zero():
    assert math.isnan(auroc(np.array([0.1, 0.9]), np.array([1, 1])))
    assert math.isnan(binary_metrics(np.array([0.1, 0.2]), np.array([0, 1]), 0.9)["ppv"])  # nobody called
    assert math.isnan(binary_metrics(np.array([0.1, 0.9]), np.array([0, 0]), 0.5)["average_precision"])


# --- patient aggregation ------------------------------------------------------------------------


def test_aggregate_patients_mean_and_max():
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1], [0.7, 0.3]])
    labels = np.array([0, 1, 0, 0])
    ids = np.array(["b", "b", "a", "a"])  # sorted-id order: a, b
    mean_p, mean_y = aggregate_patients(probs, labels, ids, "mean")
    np.testing.assert_allclose(mean_p, [[0.8, 0.2], [0.6, 0.4]])
    np.testing.assert_array_equal(mean_y, [0, 1])  # b is positive: one positive image suffices
    max_p, _ = aggregate_patients(probs, labels, ids, "max")
    np.testing.assert_allclose(max_p, [[0.7, 0.3], [0.4, 0.6]])


def test_multiclass_patient_label_is_the_most_common_ties_to_the_highest():
    probs = np.full((5, 3), 1 / 3)
    _, labels = aggregate_patients(probs, np.array([0, 0, 2, 1, 2]), np.array([1, 1, 1, 2, 2]), "mean")
    np.testing.assert_array_equal(labels, [0, 2])


def test_unknown_patient_aggregation_names_the_option():
    with pytest.raises(ValueError, match=r"eval\.patient_aggregation.*'median'.*'mean' or 'max'"):
        aggregate_patients(np.full((2, 2), 0.5), np.array([0, 1]), np.array([1, 1]), "median")


# --- the bootstrap ------------------------------------------------------------------------------


def weighted_mean(values):
    return lambda w: (w @ values) / w.sum(axis=1)


def test_two_patient_bootstrap_matches_the_enumerable_distribution():
    # Patient A: one image of value 0; patient B: three images of value 1. A resample is AA, AB
    # or BB with probabilities 1/4, 1/2, 1/4; the image mean is then 0, 3/4 or 1 (B's images
    # come along together, so AB is 3/4, not 1/2).
    values = np.array([0.0, 1.0, 1.0, 1.0])
    draws = bootstrap_samples({"mean": weighted_mean(values)}, 4, ["A", "B", "B", "B"], n_resamples=20000)[
        "mean"
    ]
    freq = {v: np.mean(np.isclose(draws, v)) for v in (0.0, 0.75, 1.0)}
    assert sum(freq.values()) == 1
    assert freq == pytest.approx({0.0: 0.25, 0.75: 0.5, 1.0: 0.25}, abs=0.015)


def test_bootstrap_sd_of_a_patient_mean_matches_the_closed_form():
    rng = np.random.default_rng(7)
    n = 40
    x = rng.normal(size=n)
    values = np.repeat(x, 2)  # two identical images per patient: the image mean is the patient mean
    draws = bootstrap_samples({"mean": weighted_mean(values)}, 2 * n, np.repeat(np.arange(n), 2),
                              n_resamples=20000, seed=1)["mean"]
    expected_sd = np.sqrt((n - 1) / n) * x.std(ddof=1) / np.sqrt(n)  # the ideal bootstrap's SD
    assert draws.std() == pytest.approx(expected_sd, rel=0.03)
    assert draws.mean() == pytest.approx(x.mean(), abs=0.03 * expected_sd * 10)


def test_same_seed_gives_identical_intervals_and_another_seed_different_ones():
    probs, labels = binary_data(8, n=150)
    stat = functools.partial(binary_metrics, probs, labels, 0.5)
    ids = np.arange(150) // 3
    a = cluster_bootstrap(stat, 150, ids, n_resamples=300, seed=11)
    b = cluster_bootstrap(stat, 150, ids, n_resamples=300, seed=11)
    c = cluster_bootstrap(stat, 150, ids, n_resamples=300, seed=12)
    assert a == b
    assert a["auroc"].estimate == c["auroc"].estimate and (a["auroc"].low, a["auroc"].high) != (
        c["auroc"].low,
        c["auroc"].high,
    )


def test_cluster_bootstrap_resamples_patients_not_images():
    probs, labels = binary_data(9, n=80)
    ids = np.array([f"P{i}" for i in range(80)])
    dup_probs, dup_labels, dup_ids = np.repeat(probs, 4), np.repeat(labels, 4), np.repeat(ids, 4)
    kw = dict(n_resamples=500, seed=3)
    original = cluster_bootstrap(functools.partial(binary_metrics, probs, labels, 0.5), 80, ids, **kw)
    by_patient = cluster_bootstrap(
        functools.partial(binary_metrics, dup_probs, dup_labels, 0.5), 320, dup_ids, **kw
    )
    by_image = cluster_bootstrap(
        functools.partial(binary_metrics, dup_probs, dup_labels, 0.5), 320, None, **kw
    )
    for name in ("auroc", "sensitivity", "specificity"):
        o, p, i = original[name], by_patient[name], by_image[name]
        assert (p.estimate, p.low, p.high) == pytest.approx((o.estimate, o.low, o.high), abs=1e-12)
        assert i.high - i.low < 0.75 * (p.high - p.low), name  # 4 copies look like 4x the data


def test_resamples_where_a_statistic_is_undefined_are_dropped_and_counted():
    labels = np.r_[1, np.zeros(9, dtype=int)]  # one positive patient: absent from ~35% of resamples
    probs = np.linspace(0.1, 0.9, 10)
    stat = functools.partial(binary_metrics, probs, labels, 0.5)
    draws = bootstrap_samples(stat, 10, None, n_resamples=1000, seed=0)["sensitivity"]
    result = cluster_bootstrap(stat, 10, None, n_resamples=1000, seed=0)["sensitivity"]
    assert result.n_dropped == np.isnan(draws).sum() and 250 < result.n_dropped < 450
    assert result.n_resamples + result.n_dropped == 1000 and math.isfinite(result.low)


def test_jackknife_leaves_out_whole_patients_and_groups_them_beyond_the_cap():
    values = np.repeat([1.0, 2.0, 3.0, 10.0], [1, 2, 3, 4])  # patient k has k+1 images of one value
    ids = np.repeat(["d", "c", "b", "a"], [1, 2, 3, 4])  # sorted-id order: a, b, c, d
    jack = jackknife_samples({"mean": weighted_mean(values)}, 10, ids)["mean"]
    np.testing.assert_allclose(jack, [(1 + 4 + 9) / 6, (1 + 4 + 40) / 7, (1 + 9 + 40) / 8, (4 + 9 + 40) / 9])
    grouped = jackknife_samples({"mean": weighted_mean(values)}, 10, ids, max_groups=2)["mean"]
    # two groups of two patients: each value is the mean of the other group's two patients
    pair_mean = {frozenset(p): values[np.isin(ids, list(p))].mean() for p in
                 [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]}
    complementary = [(pair_mean[p], pair_mean[frozenset("abcd") - p]) for p in pair_mean]
    assert any(np.allclose(sorted(grouped), sorted(pair)) for pair in complementary)


def test_bca_without_bias_or_skew_is_the_percentile_interval():
    samples = np.random.default_rng(0).normal(size=4001)
    estimate = float(np.median(samples))  # half the resamples below: z0 = 0
    jackknife = np.array([-1.0, 0.0, 1.0])  # symmetric: acceleration 0
    assert bca_interval(samples, estimate, jackknife) == pytest.approx(percentile_interval(samples))


# --- calibration --------------------------------------------------------------------------------


def test_ece_matches_torchmetrics_binary_and_multiclass():
    rng = np.random.default_rng(10)
    p = rng.random(500) * 0.999
    y = (rng.random(500) < p**2).astype(int)
    ece = expected_calibration_error(np.stack([1 - p, p], axis=1), y)
    assert ece == pytest.approx(float(tmf.binary_calibration_error(t(p), t(y), n_bins=15)), abs=1e-7)
    probs, y3 = rng.dirichlet(np.ones(3), 400), rng.integers(0, 3, 400)
    ece3 = expected_calibration_error(probs, y3, n_bins=10)
    assert ece3 == pytest.approx(
        float(tmf.multiclass_calibration_error(t(probs), t(y3), 3, n_bins=10)), abs=1e-6
    )


def test_brier_and_reliability_bins_by_hand():
    p = np.array([0.1, 0.4, 0.8, 0.95])
    y = np.array([0, 1, 1, 0])
    assert brier_score(p, y) == pytest.approx(np.mean([0.01, 0.36, 0.04, 0.9025]))
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert brier_score(probs, np.array([0, 1])) == pytest.approx(
        (0.09 + 0.04 + 0.01 + 0.01 + 0.81 + 0.64) / 2
    )
    bins = reliability_bins(p, y, n_bins=5)
    assert bins["count"] == [1, 0, 1, 0, 2] and bins["mean_predicted"][1] is None
    assert bins["observed"] == [0.0, None, 1.0, None, 0.5]
    assert bins["mean_predicted"][4] == pytest.approx(0.875)


@pytest.mark.parametrize("binary", [False, True])
def test_temperature_scaling_recovers_a_known_temperature_and_lowers_nll(binary):
    rng = np.random.default_rng(11)
    true_logits = rng.normal(size=4000) * 2 if binary else rng.normal(size=(4000, 3)) * 2
    true_probs = apply_temperature(true_logits, 1.0)
    labels = (rng.random(4000) < true_probs).astype(int) if binary else (
        (rng.random(4000)[:, None] > np.cumsum(true_probs, axis=1)).sum(axis=1))
    overconfident = 3 * true_logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)

    def nll(probs):
        p = np.stack([1 - probs, probs], axis=1) if binary else probs
        return -np.mean(np.log(p[np.arange(4000), labels]))

    assert nll(apply_temperature(overconfident, temperature)) < nll(apply_temperature(overconfident, 1.0))


# --- the report ---------------------------------------------------------------------------------


def cohort(seed: int = 12, n_patients: int = 60):
    rng = np.random.default_rng(seed)
    n_images = rng.integers(1, 4, n_patients)
    ids = np.repeat([f"MRN{12345 + i}" for i in range(n_patients)], n_images)
    labels = np.repeat((rng.random(n_patients) < 0.4).astype(int), n_images)
    p = 1 / (1 + np.exp(-(1.5 * labels + rng.normal(size=len(labels)) - 0.7)))
    return np.stack([1 - p, p], axis=1), labels, ids


def test_report_counts_per_class_and_point_estimates():
    probs, labels, ids = cohort()
    choice = ThresholdChoice(0.45, "youden")
    report = build_report(probs, labels, ids, ["normal", "abnormal"], choice, n_resamples=200)
    counts = report["counts"]
    assert counts["images"] == len(labels) and counts["patients"] == len(set(ids))
    assert counts["images_per_class"] == {"normal": int((labels == 0).sum()), "abnormal": int(labels.sum())}
    assert counts["patients_per_class"]["abnormal"] == len(set(ids[labels == 1]))
    assert sum(counts["patients_per_class"].values()) == len(set(ids))
    point = binary_metrics(probs[:, 1], labels, 0.45)
    for name in ("auroc", "sensitivity", "f1"):
        m = report["metrics"][name]
        assert m["estimate"] == pytest.approx(point[name]) and m["ci_low"] <= m["estimate"] <= m["ci_high"]
    op = report["roc"]["binary"]["operating_point"]
    assert (op["tpr"], op["fpr"]) == pytest.approx((point["sensitivity"], 1 - point["specificity"]))
    assert len(report["roc"]["binary"]["fpr"]) <= 200
    matrix = report["confusion_matrix"]["matrix"]
    assert matrix[1][1] == int(np.sum((probs[:, 1] >= 0.45) & (labels == 1))) and sum(
        map(sum, matrix)
    ) == len(labels)
    assert report["patient_level"]["metrics"]["auroc"]["estimate"] is not None


def test_report_contains_no_patient_ids():
    probs, labels, ids = cohort()
    report = build_report(probs, labels, ids, ["normal", "abnormal"], None, n_resamples=50)
    text = json.dumps(report, allow_nan=False) + format_table(report) + json.dumps(summary_metrics(report))
    assert "MRN" not in text and "12345" not in text


def test_summary_metrics_and_table_name_every_figure():
    probs, labels, ids = cohort()
    choice = choose_threshold("sensitivity:0.9", probs[:, 1], labels)
    report = build_report(probs, labels, ids, ["normal", "abnormal"], choice, n_resamples=100)
    flat = summary_metrics(report, prefix="test/")
    keys = ["sensitivity", "sensitivity_ci_low", "sensitivity_ci_high", "auroc", "ece", "brier_ci_high",
            "threshold", "patient/auroc", "patient/f1_ci_low"]
    for key in (f"test/{k}" for k in keys):
        assert isinstance(flat[key], float), key
    assert flat["test/sensitivity"] == report["metrics"]["sensitivity"]["estimate"]
    table = format_table(report)
    s = report["metrics"]["sensitivity"]
    assert "sensitivity" in table and f"{s['estimate']:.3f}  ({s['ci_low']:.3f}-{s['ci_high']:.3f})" in table
    assert "threshold" in table and "sensitivity:0.9" in table and f"{len(labels)} images" in table


def test_report_marks_a_missing_threshold_and_handles_multiclass():
    probs, labels, ids = cohort()
    report = build_report(probs, labels, None, ["normal", "abnormal"], None, n_resamples=50)
    assert report["threshold"]["value"] == 0.5 and report["threshold"]["fallback"]
    assert report["patient_level"] is None and report["ci"]["resampling_unit"].startswith("image")
    rng = np.random.default_rng(13)
    probs3, y3 = rng.dirichlet(np.ones(3), len(labels)), rng.integers(0, 3, len(labels))
    report3 = build_report(probs3, y3, ids, ["a", "b", "c"], None, n_resamples=50)
    assert {"auroc", "auroc/a", "auroc/c", "balanced_acc"} <= set(report3["metrics"]) and report3[
        "threshold"
    ] is None
    with pytest.raises(ValueError, match="binary"):
        build_report(probs3, y3, ids, ["a", "b", "c"], ThresholdChoice(0.5, "0.5"))


# --- the coverage benchmark cannot rot ----------------------------------------------------------


def test_coverage_benchmark_runs_with_the_tiniest_settings(capsys):
    spec = importlib.util.spec_from_file_location(
        "bootstrap_coverage", ROOT / "benchmarks" / "bootstrap_coverage.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--datasets", "3", "--resamples", "50", "--patients", "20",
                          "--timing-images", "200", "--timing-resamples", "20"])
    out = capsys.readouterr().out
    for figure in ("patient percentile", "patient BCa", "image percentile", "time per simulated data set",
                   "time for 20 resamples of 200 images"):
        assert figure in out
    assert set(result["coverage"]) == {(m, k) for m in ("auroc", "sensitivity") for k in (
        "patient percentile", "patient BCa", "image percentile")}
