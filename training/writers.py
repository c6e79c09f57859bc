"""What evaluation writes (README "Reading the results"): the test report at the operating
point (test_report.json, confusion_*.csv, the loggers' figures, the console table) and
predictions.csv. Every file appears whole or not at all (rundir/atomic.py)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from datamodules.csvsafe import spreadsheet_safe
from evaluation import build_report, format_table, subgroup_report, summary_metrics
from rundir.atomic import replacing, write_atomic
from rundir.layout import TEST_REPORT
from training.loggers import update_summary
from training.operating_point import OperatingPoint
from training.options import EvalOptions


def test_report_of(probs: np.ndarray, labels: np.ndarray, patient_ids: Optional[Sequence[str]],
                   class_names: Sequence[str], point: OperatingPoint, options: EvalOptions,
                   columns: Optional[Sequence[dict]] = None) -> dict:
    """The test report (evaluation.build_report) at the operating point, with its temperature;
    with eval.subgroups, the same per subgroup of ``columns`` (the images' manifest columns)."""
    ids = None if patient_ids is None else np.asarray(patient_ids, dtype=object)
    args = (probs, labels, ids, list(class_names), point.threshold if probs.shape[1] == 2 else None)
    settings = dict(n_resamples=options.bootstrap_resamples, seed=options.bootstrap_seed,
                    patient_aggregation=options.patient_aggregation, patient_threshold=point.patient_threshold)
    report = build_report(*args, **settings)
    if options.subgroups and columns is not None:
        report["subgroups"] = subgroup_report(*args, columns, options.subgroups, **settings)
    report["temperature"] = {"value": point.temperature,
                             "fitted_on_validation": point.temperature_scaling and not point.temperature_fallback,
                             "fallback": point.temperature_fallback is not None, "reason": point.temperature_fallback}
    report["validation_calibration"] = point.calibration
    return report


def write_confusion_csv(path: Path, confusion: np.ndarray, class_names: Sequence[str]) -> None:
    """Rows are true classes, columns predicted classes."""
    with replacing(path) as f:
        writer = csv.writer(f)
        writer.writerow(["true\\pred", *map(spreadsheet_safe, class_names)])
        for name, row in zip(class_names, np.asarray(confusion).tolist()):
            writer.writerow([spreadsheet_safe(name), *row])


def write_predictions(path: Path, rows, names: Sequence[str], point: Optional[OperatingPoint]) -> None:
    """rows: (path relative to the data root, label, probabilities); the decision at the point."""
    point = point or OperatingPoint(None)
    with replacing(path) as f:
        writer = csv.writer(f)
        header = ["path", "label", *[f"prob_{spreadsheet_safe(n)}" for n in names]]
        writer.writerow([*header, *(["threshold"] if len(names) == 2 else []), "predicted"])
        for rel, label, p in rows:
            decided = names[int(point.decisions(np.asarray(p)[None])[0])]
            threshold = [f"{point.threshold_value:.6g}"] if len(names) == 2 else []
            writer.writerow([*map(spreadsheet_safe, (rel, label)), *[f"{v:.6f}" for v in p],
                             *threshold, spreadsheet_safe(decided)])


def write_report(report: dict, run_dir: Path) -> str:
    """test_report.json, whole or not at all (numpy scalars become plain numbers); its text."""
    text = json.dumps(report, indent=1, allow_nan=False, default=_json_default)
    write_atomic(Path(run_dir) / TEST_REPORT, text)
    return text


def publish_report(report: dict, run_dir: Path, trainer: pl.Trainer, class_names: Sequence[str]) -> None:
    """test_report.json, confusion_test.csv, the figures in the loggers and the W&B summary,
    and the table on the console. Called on rank 0 only."""
    write_report(report, run_dir)
    matrix = report["confusion_matrix"]["matrix"]
    write_confusion_csv(Path(run_dir) / "confusion_test.csv", matrix, class_names)
    rows = [[t, p, int(matrix[i][j])] for i, t in enumerate(class_names) for j, p in enumerate(class_names)]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table("test/confusion_matrix", columns=["true", "predicted", "count"], data=rows)
    summary = summary_metrics(report, prefix="test/")
    if report.get("validation_calibration") is not None:
        summary["val/ece_best"] = report["validation_calibration"]["ece"]
        summary["val/brier_best"] = report["validation_calibration"]["brier"]
    finite = {k: v for k, v in summary.items() if isinstance(v, float) and math.isfinite(v)}
    for logger in trainer.loggers:
        logger.log_metrics(finite, step=trainer.global_step)
    update_summary(trainer, finite)
    temperature = report.get("temperature") or {}
    note = f"\ntemperature 1: {temperature['reason']}" if temperature.get("fallback") else ""
    print(f"\n{format_table(report)}{note}\n(test_report.json in {run_dir})", flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
