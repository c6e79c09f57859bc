"""The operating point: how a model's logits become decisions (a temperature, and for binary
tasks a threshold), chosen on validation or out-of-fold outputs only and stored with the
weights it was chosen for (checkpoint key `operating_point`, written by training.evaluate)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from evaluation import (
    ThresholdChoice,
    apply_temperature,
    brier_score,
    calibrated_temperature,
    called_positive,
    choose_patient_threshold,
    choose_threshold,
    expected_calibration_error,
    parse_threshold,
    reliability_bins,
)
from training.options import EvalOptions

log = logging.getLogger("cli")
CHECKPOINT_KEY = "operating_point"


@dataclass(frozen=True)
class OperatingPoint:
    """`calibration`: on the validation outputs it was chosen on; `temperature_fallback`: why
    temperature scaling, though asked, was not used; `patient_threshold`: the same rule chosen on
    validation PATIENTS aggregated by `patient_aggregation` (README "Reading the results")."""

    threshold: Optional[ThresholdChoice]
    temperature: float = 1.0
    temperature_scaling: bool = False
    temperature_fallback: Optional[str] = None
    calibration: Optional[dict] = None
    patient_threshold: Optional[ThresholdChoice] = None
    patient_aggregation: Optional[str] = None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return apply_temperature(np.asarray(logits, dtype=np.float64), self.temperature)

    def decisions(self, probs: np.ndarray) -> np.ndarray:
        """Class index per image: binary at the threshold (0.5 without one), else the most probable."""
        probs = np.asarray(probs)
        if probs.shape[1] != 2:
            return probs.argmax(axis=1)
        return called_positive(probs[:, 1], self.threshold_value).astype(np.int64)

    @property
    def threshold_value(self) -> float:
        return self.threshold.value if self.threshold is not None else 0.5

    def matches(self, options: EvalOptions) -> bool:
        """Chosen with these settings (so it can be reused instead of chosen again)?"""
        rule_same = self.threshold is None or self.threshold.rule == str(parse_threshold(options.threshold).text)
        patients_same = self.patient_threshold is None or self.patient_aggregation == options.patient_aggregation
        return rule_same and patients_same and self.temperature_scaling == options.temperature_scaling

    def warn(self, options: EvalOptions) -> None:
        if self.threshold is not None and self.threshold.fallback:
            log.warning("eval.threshold=%s could not be applied: %s. Using %.2f; test figures at this threshold "
                        "are not an operating point chosen on validation.", options.threshold,
                        self.threshold.reason, self.threshold.value)
        if self.temperature_fallback:
            log.warning("eval.temperature_scaling: %s", self.temperature_fallback)

    def to_dict(self) -> dict:
        return {**asdict(self), "threshold": self.threshold.to_dict() if self.threshold else None,
                "patient_threshold": self.patient_threshold.to_dict() if self.patient_threshold else None}

    @classmethod
    def from_dict(cls, data: dict) -> OperatingPoint:
        threshold = ThresholdChoice.from_dict(data["threshold"]) if data.get("threshold") else None
        patient = ThresholdChoice.from_dict(data["patient_threshold"]) if data.get("patient_threshold") else None
        return cls(threshold, float(data.get("temperature", 1.0)), bool(data.get("temperature_scaling", False)),
                   data.get("temperature_fallback"), data.get("calibration"), patient, data.get("patient_aggregation"))


def choose_operating_point(logits: np.ndarray, labels: np.ndarray, options: EvalOptions,
                           patient_ids: Optional[np.ndarray] = None) -> OperatingPoint:
    """On validation (or out-of-fold) outputs only: temperature (if asked) first, then the threshold
    rule, on images and, when the data names patients (`patient_ids`, one per output), on patients."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels).astype(np.int64)
    temperature, fallback = calibrated_temperature(logits, labels) if options.temperature_scaling else (1.0, None)
    probs = apply_temperature(logits, temperature)
    binary = logits.shape[1] == 2
    spec = parse_threshold(options.threshold)
    threshold = choose_threshold(spec, probs[:, 1], labels) if binary else None
    patient = choose_patient_threshold(spec, probs[:, 1], labels, np.asarray(patient_ids, dtype=object),
                                       options.patient_aggregation) if binary and patient_ids is not None else None
    calibration = {"images": int(len(labels)), "ece": float(expected_calibration_error(probs, labels, 15)),
                   "brier": float(brier_score(probs, labels)),
                   "reliability": reliability_bins(probs, labels, 15)}
    return OperatingPoint(threshold, temperature, options.temperature_scaling, fallback, calibration, patient,
                          options.patient_aggregation if patient is not None else None)


def fixed_operating_point(options: EvalOptions, num_classes: int) -> Optional[OperatingPoint]:
    """A fixed number needs no validation data (unless temperature scaling is on)."""
    spec = parse_threshold(options.threshold)
    if spec.kind != "fixed" or options.temperature_scaling:
        return None
    return OperatingPoint(ThresholdChoice(float(spec.target), spec.text) if num_classes == 2 else None)


def read_checkpoint(ckpt_path: Optional[str]) -> Optional[dict]:
    """A checkpoint's contents, memory-mapped; None without a file (Lightning names a missing file itself)."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    return torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
