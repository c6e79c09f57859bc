"""Test-set statistics with patient-level confidence intervals (numpy only, no Lightning).

choice = choose_threshold("youden", val_probs[:, 1], val_labels)    # on VALIDATION
patients = choose_patient_threshold("youden", val_probs[:, 1], val_labels, val_patient_ids)  # ditto
report = build_report(test_probs, test_labels, test_patient_ids, ["normal", "abnormal"], choice,
                      patient_threshold=patients)
print(format_table(report)); logger.log_metrics(summary_metrics(report, prefix="test/"))
report["subgroups"] = subgroup_report(test_probs, test_labels, test_patient_ids, names, choice, columns, ["sex", "age:18,65"])
"""

from evaluation.binomial import clopper_pearson, clustered_clopper_pearson, effective_sample_size
from evaluation.bootstrap import Interval, bootstrap_samples, cluster_bootstrap, jackknife_samples
from evaluation.calibration import (
    apply_temperature,
    brier_score,
    calibrated_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from evaluation.decision import called_positive
from evaluation.metrics import (
    auroc,
    average_precision,
    binary_metrics,
    confusion_counts,
    metrics_from_counts,
    multiclass_metrics,
    proportion_outcomes,
    roc_curve,
)
from evaluation.patients import DEFAULT_AGGREGATION, aggregate_patients, choose_patient_threshold
from evaluation.report import build_report, format_subgroups, format_table, summary_metrics
from evaluation.subgroups import check_columns, columns_of, parse_subgroups, subgroup_report
from evaluation.threshold import ThresholdChoice, ThresholdSpec, choose_threshold, parse_threshold

__all__ = [
    "DEFAULT_AGGREGATION",
    "Interval",
    "ThresholdChoice",
    "ThresholdSpec",
    "aggregate_patients",
    "apply_temperature",
    "auroc",
    "average_precision",
    "binary_metrics",
    "bootstrap_samples",
    "brier_score",
    "calibrated_temperature",
    "called_positive",
    "build_report",
    "check_columns",
    "choose_patient_threshold",
    "choose_threshold",
    "clopper_pearson",
    "cluster_bootstrap",
    "clustered_clopper_pearson",
    "columns_of",
    "confusion_counts",
    "effective_sample_size",
    "expected_calibration_error",
    "fit_temperature",
    "format_subgroups",
    "format_table",
    "jackknife_samples",
    "metrics_from_counts",
    "multiclass_metrics",
    "parse_subgroups",
    "parse_threshold",
    "proportion_outcomes",
    "reliability_bins",
    "roc_curve",
    "subgroup_report",
    "summary_metrics",
]
