"""The evaluation contract of a run: the operating point is chosen on VALIDATION (never on
test), stored with the model, and every test figure is reported with its patient-level 95%
confidence interval.

* After fit, the best checkpoint is run over the validation split (quietly: nothing is
  logged, so W&B's hyperband sees no extra row), temperature scaling is fitted on its logits
  when asked, then the threshold rule (`eval.threshold`) is applied to its probabilities.
  The result (OperatingPoint) goes into the checkpoint files and the run summary.
* `test` and `predict` use the checkpoint's operating point when it was chosen with the same
  settings; otherwise (another rule asked, or an older checkpoint) it is chosen again on the
  validation split, never on test.
* On test, EvaluationReport writes test_report.json (figures, CIs, threshold, counts,
  calibration, ROC, confusion matrix; no patient is named), logs the same figures to the
  loggers and the W&B summary, and prints a short table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from evaluation import (
    ThresholdChoice,
    apply_temperature,
    brier_score,
    build_report,
    choose_patient_threshold,
    choose_threshold,
    columns_of,
    expected_calibration_error,
    fit_temperature,
    format_table,
    parse_threshold,
    reliability_bins,
    subgroup_report,
    summary_metrics,
)
from models.classifier import write_confusion_csv
from training.loggers import update_summary
from training.options import EvalOptions

log = logging.getLogger("cli")
CHECKPOINT_KEY = "operating_point"
REPORT_FILE = "test_report.json"


@dataclass(frozen=True)
class OperatingPoint:
    """How a model's logits become decisions: a temperature, and for binary tasks a threshold
    on the positive-class probability (`prob >= threshold` is positive)."""

    threshold: Optional[ThresholdChoice]
    temperature: float = 1.0
    temperature_scaling: bool = False

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return apply_temperature(np.asarray(logits, dtype=np.float64), self.temperature)

    def matches(self, options: EvalOptions) -> bool:
        """Chosen with these settings (so it can be reused instead of chosen again)?"""
        rule_same = self.threshold is None or self.threshold.rule == str(parse_threshold(options.threshold).text)
        return rule_same and self.temperature_scaling == options.temperature_scaling

    def to_dict(self) -> dict:
        return {"threshold": self.threshold.to_dict() if self.threshold else None,
                "temperature": self.temperature, "temperature_scaling": self.temperature_scaling}

    @classmethod
    def from_dict(cls, data: dict) -> OperatingPoint:
        threshold = ThresholdChoice.from_dict(data["threshold"]) if data.get("threshold") else None
        return cls(threshold, float(data.get("temperature", 1.0)), bool(data.get("temperature_scaling", False)))


def choose_operating_point(logits: np.ndarray, labels: np.ndarray, options: EvalOptions) -> OperatingPoint:
    """On validation outputs only: temperature (if asked) first, then the threshold rule."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels).astype(np.int64)
    temperature = 1.0
    if options.temperature_scaling:
        temperature = float(fit_temperature(logits, labels))
    if logits.shape[1] != 2:
        return OperatingPoint(None, temperature, options.temperature_scaling)
    probs = apply_temperature(logits, temperature)
    choice = choose_threshold(parse_threshold(options.threshold), probs[:, 1], labels)
    if choice.fallback:
        log.warning("eval.threshold=%s could not be applied: %s. Using %.2f; test figures at this threshold "
                    "are not an operating point chosen on validation.", options.threshold, choice.reason,
                    choice.value)
    return OperatingPoint(choice, temperature, options.temperature_scaling)


def fixed_operating_point(options: EvalOptions, num_classes: int) -> Optional[OperatingPoint]:
    """A fixed number needs no validation data (unless temperature scaling is on)."""
    spec = parse_threshold(options.threshold)
    if spec.kind != "fixed" or options.temperature_scaling:
        return None
    threshold = ThresholdChoice(float(spec.target), spec.text) if num_classes == 2 else None
    return OperatingPoint(threshold, 1.0, False)


def read_operating_point(ckpt_path: Optional[str]) -> Optional[OperatingPoint]:
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    stored = checkpoint.get(CHECKPOINT_KEY)
    return OperatingPoint.from_dict(stored) if stored else None


def store_operating_point(ckpt_paths: Sequence[str], point: OperatingPoint) -> None:
    """Add the operating point to checkpoint files already written (atomically)."""
    for path in ckpt_paths:
        if not path or not Path(path).is_file():
            continue
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint[CHECKPOINT_KEY] = point.to_dict()
        fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=".ckpt.")
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def calibration_summary(logits: np.ndarray, labels: np.ndarray, point: OperatingPoint, n_bins: int = 15) -> dict:
    probs = point.probabilities(logits)
    labels = np.asarray(labels).astype(np.int64)
    return {"images": int(len(labels)), "ece": float(expected_calibration_error(probs, labels, n_bins)),
            "brier": float(brier_score(probs, labels)), "reliability": reliability_bins(probs, labels, n_bins)}


def patient_ids_of(records: Sequence) -> Optional[list[str]]:
    """Patient of each record; None when the data names no patients (each image is then its own
    patient, and the report says so)."""
    if all(r.patient_id == r.rel for r in records):
        log.warning("eval: the data has no patient_id, so each image counts as its own patient; if patients have "
                    "several images (both hands, views), the intervals are too narrow and there are no "
                    "patient-level figures. Add a patient_id column to the manifest.")
        return None
    return [r.patient_id for r in records]


def test_report_of(probs: np.ndarray, labels: np.ndarray, patient_ids: Optional[Sequence[str]],
                   class_names: Sequence[str],
                   point: OperatingPoint, options: EvalOptions,
                   patient_threshold: Optional[ThresholdChoice] = None,
                   columns: Optional[Sequence[dict]] = None) -> dict:
    """The test report (evaluation.build_report) at the operating point, with its temperature;
    with eval.subgroups, the same per subgroup of ``columns`` (the images' manifest columns)."""
    ids = None if patient_ids is None else np.asarray(patient_ids, dtype=object)
    args = (probs, labels, ids, list(class_names), point.threshold if probs.shape[1] == 2 else None)
    settings = dict(n_resamples=options.bootstrap_resamples, seed=options.bootstrap_seed,
                    patient_aggregation=options.patient_aggregation, patient_threshold=patient_threshold)
    report = build_report(*args, **settings)
    if options.subgroups and columns is not None:
        report["subgroups"] = subgroup_report(*args, columns, options.subgroups, **settings)
    report["temperature"] = {"value": point.temperature, "fitted_on_validation": point.temperature_scaling}
    return report


def publish_report(report: dict, run_dir: Path, trainer: pl.Trainer, class_names: Sequence[str]) -> None:
    """test_report.json, confusion_test.csv, the figures in the loggers and the W&B summary,
    and the table on the console. Rank 0 only."""
    if not trainer.is_global_zero:
        return
    (Path(run_dir) / REPORT_FILE).write_text(json.dumps(report, indent=1, allow_nan=False, default=_json_default))
    matrix = report["confusion_matrix"]["matrix"]
    write_confusion_csv(Path(run_dir) / "confusion_test.csv", torch.tensor(matrix), list(class_names))
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
    print(f"\n{format_table(report)}\n(test_report.json in {run_dir})", flush=True)


class EvaluationReport(Callback):
    """The test report of every test of the run, from the outputs the model gathered."""

    def __init__(self, run_dir: Path, options: EvalOptions,
                 patient_ids: Callable[[str], Optional[Sequence[str]]]) -> None:
        self.run_dir, self.options, self.patient_ids = Path(run_dir), options, patient_ids
        self.report: Optional[dict] = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        outputs = pl_module.epoch_outputs.get("test")
        if not trainer.is_global_zero or outputs is None or trainer.sanity_checking:
            return
        point: OperatingPoint = pl_module.operating_point or OperatingPoint(None)
        probs = point.probabilities(outputs["logits"])
        ids = self.patient_ids("test")
        ids = None if ids is None else np.asarray(ids, dtype=object)[outputs["index"]]
        val = pl_module.epoch_outputs.get("val")
        val_ids = self.patient_ids("val") if val is not None and ids is not None and point.threshold else None
        patient_threshold = None if val_ids is None else choose_patient_threshold(  # on validation patients
            self.options.threshold, point.probabilities(val["logits"])[:, 1], val["labels"],
            np.asarray(val_ids, dtype=object)[val["index"]], self.options.patient_aggregation)
        report = test_report_of(probs, outputs["labels"], ids, pl_module.class_names, point, self.options,
                                patient_threshold, columns_of(trainer.datamodule.records_of("test"), outputs["index"]))
        report["validation_calibration"] = calibration_summary(val["logits"], val["labels"], point) \
            if val is not None else None
        self.report = report
        publish_report(report, self.run_dir, trainer, pl_module.class_names)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
