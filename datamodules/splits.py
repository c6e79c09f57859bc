"""What the records mean: class names in label order, and splits and folds made at patient
level, stratified by label: no patient in two splits (README, Your data)."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Optional

from datamodules.records import DataError, Record, listing, normalize_label

log = logging.getLogger(__name__)

NEGATIVE_NAMES = ("normal", "negative", "healthy", "control", "no", "0")


def check_labels(records: list[Record], classes: Optional[list[str]], source: str) -> list[str]:
    """Class names in label order: `classes` if given (every label must be in it), else sorted,
    a "normal"-like name first of two (the positive class is the last). Labels that differ only
    in letter case stay separate classes, with a warning: almost always one class written two ways."""
    found = sorted({r.label for r in records})
    by_case: dict[str, list[str]] = defaultdict(list)
    for label in found:
        by_case[label.casefold()].append(label)
    for variants in (v for v in by_case.values() if len(v) > 1):
        log.warning("%s: labels %s differ only in letter case and are kept as separate classes; "
                    "if they are one class, write them the same way in the data",
                    source, " and ".join(map(repr, variants)))
    if classes is None:
        if len(found) < 2:
            raise DataError(f"{source}: found {len(found)} class(es) {found}; a classifier needs at least 2")
        if len(found) == 2 and found[1].lower() in NEGATIVE_NAMES and found[0].lower() not in NEGATIVE_NAMES:
            found.reverse()
        return found
    classes = [normalize_label(c) for c in classes]
    if "" in classes or len(set(classes)) < len(classes):
        raise DataError(f"data.classes {classes} has an empty or repeated name (after normalize_label)")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{source}: unknown label(s) {unknown}; data.classes allows {list(classes)}")
    return list(classes)


def _patients_by_label(records: list[Record]) -> dict[str, list[str]]:
    """Patients (sorted) by their most common label, the first seen on a tie: stratifying on it
    keeps every class in small splits and folds."""
    labels_of: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        labels_of[r.patient_id][r.label] += 1
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, counts in sorted(labels_of.items()):
        by_label[counts.most_common(1)[0][0]].append(patient)
    return by_label


def assign_splits(records: list[Record], *, val_fraction: float, test_fraction: float, seed: int) -> list[Record]:
    """Give every record without a split one, at patient level and stratified by label; patients
    with a given split keep it, and one given two splits is an error (it would leak)."""
    given: dict[str, set[str]] = defaultdict(set)
    first_image: dict[str, str] = {}
    for r in records:
        first_image.setdefault(r.patient_id, r.rel)
        if r.split:
            given[r.patient_id].add(r.split)
    # Name the images, not the patient IDs: those are often medical record numbers.
    leaking = [f"the patient of {first_image[p]}: {sorted(s)}" for p, s in given.items() if len(s) > 1]
    if leaking:
        raise DataError(f"{len(leaking)} patient(s) appear in more than one split:{listing(leaking)}")
    split_of = {patient: next(iter(splits)) for patient, splits in given.items()}
    by_label = _patients_by_label([r for r in records if r.patient_id not in given])
    rng = random.Random(seed)
    for label in sorted(by_label):
        patients = by_label[label]
        rng.shuffle(patients)
        n_test = round(len(patients) * test_fraction)
        n_val = round(len(patients) * val_fraction)
        for i, patient in enumerate(patients):
            split_of[patient] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [replace(r, split=r.split or split_of[r.patient_id]) for r in records]


def assign_folds(records: list[Record], *, folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold (0..folds-1) over `records` (the non-test images), stratified by label: each
    label's patients shuffled and dealt round-robin, the deal continuing across labels so that fold
    sizes differ by at most one patient."""
    if folds < 2:
        raise DataError(f"data.folds must be at least 2 for cross-validation, got {folds}")
    by_label = _patients_by_label(records)
    smallest = min(by_label.items(), key=lambda kv: len(kv[1])) if by_label else ("", [])
    if len(smallest[1]) < folds:
        raise DataError(f"data.folds={folds} is more than the {len(smallest[1])} patient(s) of class "
                        f"{smallest[0]!r} outside the test split: every fold needs one of each class. "
                        "Use fewer folds.")
    rng = random.Random(seed)
    dealt: list[str] = []
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
        dealt += by_label[label]
    return {patient: i % folds for i, patient in enumerate(dealt)}
