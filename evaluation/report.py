"""The test report: every figure with its 95% patient-level interval and the counts it rests on
(README, "Reading the results"); JSON-ready, flattened for loggers, printed as a table. It holds
counts, never patient ids: it is meant to leave the hospital."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from evaluation.bootstrap import cluster_bootstrap, method_label, patient_index
from evaluation.calibration import N_BINS, brier_score, expected_calibration_error, reliability_bins
from evaluation.metrics import (
    binary_metrics,
    confusion_counts,
    metrics_from_counts,
    multiclass_metrics,
    proportion_outcomes,
    roc_curve,
)
from evaluation.patients import DEFAULT_AGGREGATION, Aggregation, aggregate_patients
from evaluation.threshold import FALLBACK, ThresholdChoice

ROC_POINTS = 200  # enough to draw the curve; the full curve has one point per distinct score
SUBGROUP_FIGURES = ("auroc", "sensitivity", "specificity")  # each subgroup's line shows these
ORDER = ("auroc", "average_precision", "sensitivity", "specificity", "ppv", "npv", "acc", "balanced_acc", "f1")


def _downsample(curve: dict[str, np.ndarray], n: int = ROC_POINTS) -> dict[str, list]:
    keep = np.unique(np.round(np.linspace(0, len(curve["fpr"]) - 1, n)).astype(int))
    return {k: v[keep].tolist() for k, v in curve.items()}  # _jsonable: non-finite -> None


def _statistic(probs: np.ndarray, labels: np.ndarray, threshold: float | None, names: Sequence[str]):
    """weights -> every metric of the section, for the point estimate and the bootstrap alike."""
    metrics = (
        functools.partial(binary_metrics, probs[:, 1], labels, threshold)
        if threshold is not None
        else functools.partial(multiclass_metrics, probs, labels)
    )

    def statistic(weights: np.ndarray) -> dict[str, np.ndarray]:
        # multiclass_metrics names per-class AUROC by index (auroc/0); the report by class name
        values = {f"auroc/{names[int(k[6:])]}" if k.startswith("auroc/") else k: v
                  for k, v in metrics(weights=weights).items()}
        values["ece"] = expected_calibration_error(probs, labels, weights=weights)
        values["brier"] = brier_score(probs, labels, weights)
        return values

    return statistic


def _section(probs, labels, patient_ids, threshold, names, **bootstrap) -> dict:
    n, c = probs.shape
    statistic = _statistic(probs, labels, threshold, names)
    intervals = cluster_bootstrap(
        statistic, n, patient_ids, proportions=proportion_outcomes(probs, labels, threshold), **bootstrap
    )
    calibration = {k: intervals.pop(k).to_dict() for k in ("ece", "brier")}
    calibration.update(n_bins=N_BINS, reliability=reliability_bins(probs, labels))
    if threshold is not None:
        counts = confusion_counts(probs[:, 1], labels, threshold)
        matrix = [[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]]
        at = metrics_from_counts(**counts)
        roc = _downsample(roc_curve(probs[:, 1], labels))
        roc["operating_point"] = {
            "threshold": threshold,
            "fpr": 1 - at["specificity"],
            "tpr": at["sensitivity"],
        }
        roc = {"binary": roc}
    else:
        matrix = np.zeros((c, c))
        np.add.at(matrix, (labels, probs.argmax(axis=1)), 1)
        roc = {names[k]: _downsample(roc_curve(probs[:, k], labels == k)) for k in range(c)}
    ordered = sorted(intervals, key=lambda k: (ORDER.index(k.split("/")[0]), k))
    return {
        "metrics": {k: intervals[k].to_dict() for k in ordered},
        "calibration": calibration,
        "roc": _jsonable(roc),
        "confusion_matrix": {
            "rows": "true",
            "columns": "predicted",
            "labels": list(names),
            "matrix": [[int(x) for x in row] for row in matrix],
        },
    }


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def _per_class(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    return {name: int(n) for name, n in zip(names, np.bincount(labels, minlength=len(names)))}


def figures(section: dict) -> dict[str, dict]:
    """A section's metrics and its calibration figures (ECE, Brier), each {estimate, ci_low, ...}."""
    calibration = section["calibration"]
    return {**section["metrics"], "ece": calibration["ece"], "brier": calibration["brier"]}


def with_interval(figure: dict) -> str:
    """``0.912 (0.850-0.960)``; ``n/a`` when undefined."""
    if figure.get("estimate") is None:
        return "n/a"
    ci = "" if figure.get("ci_low") is None else f" ({figure['ci_low']:.3f}-{figure['ci_high']:.3f})"
    return f"{figure['estimate']:.3f}{ci}"


def per_class_counts(counts: dict, names: Sequence[str]) -> str:
    """``normal 43/25, abnormal 20/11``: images/patients per class."""
    return ", ".join(f"{n} {counts['images_per_class'][n]}/{counts['patients_per_class'][n]}" for n in names)


def build_report(
    probs: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray | Sequence | None,
    class_names: Sequence[str],
    threshold: ThresholdChoice | None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    patient_aggregation: Aggregation = DEFAULT_AGGREGATION,
    patient_threshold: ThresholdChoice | None = None,
    confidence: float = 0.95,
    ci_method: Literal["bca", "percentile"] = "bca",
) -> dict:
    """Every test figure of (N, C) ``probs`` (binary when C == 2, class 1 positive) with its
    interval. ``threshold`` and ``patient_threshold`` (binary only) were chosen on VALIDATION
    (``choose_threshold``, ``choose_patient_threshold``); None: 0.5, or the image-level threshold
    for patients, and the report says so. ``patient_ids`` None: each image its own patient."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64)
    n, c = probs.shape if probs.ndim == 2 else (len(probs), 0)
    if n == 0:
        raise ValueError("no images to evaluate in split 'test'")
    if c < 2 or n != len(labels) or len(class_names) != c:
        raise ValueError(f"need probs (N, C>=2), labels (N,) and C class_names; got probs {probs.shape}, "
                         f"labels {labels.shape}, {len(class_names)} names")
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must be in 0..{c - 1}")
    binary = c == 2
    if not binary and threshold is not None:
        raise ValueError("a threshold applies to binary tasks only; multiclass predictions are the argmax")
    if binary and threshold is None:
        threshold = ThresholdChoice(
            FALLBACK, str(FALLBACK), True, "no threshold chosen on validation; 0.5 used"
        )
    cut = threshold.value if binary else None
    patient = patient_index(len(labels), patient_ids)
    n_patients = int(patient.max()) + 1
    settings = dict(n_resamples=n_resamples, seed=seed, confidence=confidence, method=ci_method)
    report = {
        "split": "test",
        "task": "binary" if binary else "multiclass",
        "class_names": list(class_names),
        "ci": {
            "method": ci_method,
            "confidence": confidence,
            "n_resamples": n_resamples,
            "seed": seed,
            "resampling_unit": "patient" if patient_ids is not None else "image (no patient ids)",
        },
        "threshold": threshold.to_dict() if binary else None,
    }
    p_probs, p_labels = aggregate_patients(probs, labels, patient, patient_aggregation)
    report["counts"] = {
        "images": len(labels),
        "patients": n_patients,
        "images_per_class": _per_class(labels, class_names),
        "patients_per_class": _per_class(p_labels, class_names),
    }
    report.update(_section(probs, labels, patient_ids, cut, class_names, **settings))
    report["patient_level"] = None
    if n_patients < len(labels):  # some patient has more than one image
        chosen = binary and patient_threshold is not None
        p_choice = patient_threshold if chosen else threshold  # None for multiclass (argmax)
        note = None
        if chosen:
            how = f"rule {p_choice.rule} chosen on validation patients"
            note = f"fallback: {p_choice.reason}" if p_choice.fallback else how
        elif binary:
            note = "the image-level threshold (none chosen on validation patients)"
        p_cut = p_choice.value if binary else None
        report["patient_level"] = {
            "aggregation": patient_aggregation,
            "threshold": p_choice.to_dict() if binary else None,
            "threshold_note": note,
            **_section(p_probs, p_labels, None, p_cut, class_names, **settings),
        }
    return report


def summary_metrics(report: dict, prefix: str = "test/") -> dict[str, float]:
    """Flat {name: float} for loggers: ``{prefix}{metric}``, ``..._ci_low``, ``..._ci_high``,
    ECE and Brier likewise, the threshold, the counts, and ``{prefix}patient/...``. NaN if undefined."""

    def flat(section: dict, pre: str) -> dict[str, float]:
        out = {}
        for name, iv in figures(section).items():
            for suffix, key in (("", "estimate"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                out[f"{pre}{name}{suffix}"] = math.nan if iv[key] is None else float(iv[key])
        return out

    out = flat(report, prefix)
    if report["threshold"] is not None:
        out[f"{prefix}threshold"] = float(report["threshold"]["value"])
    out[f"{prefix}n_images"] = float(report["counts"]["images"])
    out[f"{prefix}n_patients"] = float(report["counts"]["patients"])
    if report["patient_level"] is not None:
        out.update(flat(report["patient_level"], f"{prefix}patient/"))
        if report["patient_level"].get("threshold") is not None:
            out[f"{prefix}patient/threshold"] = float(report["patient_level"]["threshold"]["value"])
    return out


def _rows(section: dict) -> list[str]:
    rows = []
    for name, iv in figures(section).items():
        est = "n/a" if iv["estimate"] is None else f"{iv['estimate']:.3f}"
        ci = "" if iv["ci_low"] is None else f"({iv['ci_low']:.3f}-{iv['ci_high']:.3f})"
        dropped = f"  [{iv['n_dropped']} resamples undefined]" if iv["n_dropped"] else ""
        method = method_label(iv.get("method", ""), iv.get("n_eff"))
        rows.append(f"  {name:<22}{est:>7}  {ci:<15}  {method}{dropped}")
    return rows


def format_table(report: dict) -> str:
    """A short table: metric, estimate, CI; the threshold line and the counts line first."""
    counts, ci = report["counts"], report["ci"]
    lines = [f"{report['split']}: {counts['images']} images, {counts['patients']} patients "
             f"(images/patients per class: {per_class_counts(counts, report['class_names'])})"]
    th = report["threshold"]
    if th is not None:
        how = f"fallback: {th['reason']}" if th["fallback"] else f"rule {th['rule']} chosen on validation"
        if not th["fallback"] and th["val_sensitivity"] is not None and th["val_specificity"] is not None:
            how += f" (val sensitivity {th['val_sensitivity']:.3f}, specificity {th['val_specificity']:.3f})"
        lines.append(f"threshold {th['value']:.4g}: {how}")
    level = f"{100 * ci['confidence']:g}% CI"
    lines.append(f"  {'metric':<22}{'value':>7}  {level:<15}  method "
                 f"({ci['method']}: {ci['n_resamples']} resamples by {ci['resampling_unit']})")
    lines += _rows(report)
    patients = report["patient_level"]
    if patients is not None:
        how = f"{patients['aggregation']} of each patient's images"
        th = patients.get("threshold")
        if th is not None:
            how += f"; threshold {th['value']:.4g}, {patients['threshold_note']}"
        lines.append(f"patient level ({how}):")
        lines += _rows(patients)
    if report.get("subgroups"):
        lines.append(format_subgroups(report["subgroups"]))
    return "\n".join(lines)


def format_subgroups(section: dict) -> str:
    """The ``subgroups`` section (evaluation/subgroups.py) for the console: per group the counts,
    the main figures, the too-small line."""
    lines = ["subgroups (same operating point; patient-level 95% CI):"]
    for column in section["by"]:
        for g in column["groups"]:
            c = g["counts"]
            shown = [f"{name} {with_interval(g['metrics'][name])}" for name in SUBGROUP_FIGURES
                     if g["metrics"].get(name, {}).get("estimate") is not None]
            lines.append(f"  {column['column']}={g['group']}: {c['images']} images, {c['patients']} patients; "
                         + ("; ".join(shown) or "no figure defined"))
            if g["note"]:
                lines.append(f"    {g['note']}")
    return "\n".join(lines)
