"""Patient-level decisions: one rule turns a patient's images into one probability and one label,
and the patient-level operating point is chosen on VALIDATION patients with that same rule. Why
``max`` by default and when ``mean`` fits: README, "Patient level".
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from evaluation.threshold import ThresholdChoice, ThresholdSpec, choose_threshold

Aggregation = Literal["mean", "max"]
DEFAULT_AGGREGATION: Aggregation = "max"


def aggregate_patients(
    probs: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray, how: Aggregation = DEFAULT_AGGREGATION
) -> tuple[np.ndarray, np.ndarray]:
    """One row per patient (in sorted-id order): probabilities (P, C), labels (P,). ``max``: binary,
    the highest positive-class probability (p0 = 1 - p1); multiclass, the per-class maxima
    renormalised. Labels: binary, positive if any image is; multiclass, the most common label
    (ties: the highest class index)."""
    if how not in ("mean", "max"):
        raise ValueError(f"eval.patient_aggregation: got {how!r}; allowed: 'mean' or 'max'")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    n, c = probs.shape
    _, patient = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients = patient.max() + 1 if n else 0
    if how == "mean":
        out = np.zeros((n_patients, c))
        np.add.at(out, patient, probs)
        out /= np.bincount(patient, minlength=n_patients)[:, None]
    else:
        out = np.full((n_patients, c), -np.inf)
        np.maximum.at(out, patient, probs)
        if c == 2:
            out[:, 0] = 1 - out[:, 1]
        else:
            out /= out.sum(axis=1, keepdims=True)
    votes = np.zeros((n_patients, c), dtype=np.int64)
    np.add.at(votes, (patient, labels), 1)
    if c == 2:
        patient_labels = (votes[:, 1] > 0).astype(np.int64)
    else:  # argmax over reversed columns: the first maximum found is the highest class index
        patient_labels = c - 1 - votes[:, ::-1].argmax(axis=1)
    return out, patient_labels


def choose_patient_threshold(
    spec: ThresholdSpec | str | float,
    probs_pos: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray,
    how: Aggregation = DEFAULT_AGGREGATION,
) -> ThresholdChoice:
    """The threshold rule applied to VALIDATION patients aggregated as ``aggregate_patients``."""
    probs_pos = np.asarray(probs_pos, dtype=np.float64).reshape(-1)
    patient_probs, patient_labels = aggregate_patients(
        np.stack([1 - probs_pos, probs_pos], axis=1), np.asarray(labels).astype(np.int64), patient_ids, how
    )
    return choose_threshold(spec, patient_probs[:, 1], patient_labels)
