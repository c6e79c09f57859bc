"""Test figures per subgroup (sex, site, age band, ...): ``build_report`` once per group of images
(README, "Subgroups"). A column's values appear only as group labels next to counts and figures
(a band label, never an age): no per-image rows, no patient ids.

Too small: fewer than ``MIN_PATIENTS_PER_CLASS`` patients of a class. With 5 of 5 found the exact
95% interval of sensitivity (0.478-1) still reaches below 0.5, a coin flip; 6 of 6 is the
smallest that cannot (0.541-1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.report import build_report
from evaluation.threshold import ThresholdChoice

MIN_PATIENTS_PER_CLASS = 6
MAX_GROUPS = 20  # more distinct values is an identifier or a number, not a subgroup
MISSING = "missing"
OPTION = "eval.subgroups"


@dataclass(frozen=True)
class SubgroupSpec:
    """One entry of eval.subgroups: a column, and for numeric bands the cut points."""

    column: str
    cuts: tuple[float, ...] = ()

    @property
    def text(self) -> str:
        return self.column + (":" + ",".join(f"{c:g}" for c in self.cuts) if self.cuts else "")

    def group_of(self, value: str) -> str:
        value = (value or "").strip()
        if not self.cuts:
            return value or MISSING
        try:
            x = float(value)
        except ValueError:
            return MISSING
        if not math.isfinite(x):
            return MISSING
        return self.bands()[int(np.searchsorted(self.cuts, x, side="right"))]

    def bands(self) -> list[str]:
        """Band labels in order: below the first cut, between cuts (half-open), from the last."""
        c = [f"{x:g}" for x in self.cuts]
        return [f"<{c[0]}", *(f"[{a}, {b})" for a, b in zip(c, c[1:])), f">={c[-1]}"]


def parse_subgroups(specs: Sequence[str]) -> list[SubgroupSpec]:
    """``["sex", "age:0,18,65"]`` -> specs; a bad entry raises ValueError naming eval.subgroups."""
    out: list[SubgroupSpec] = []
    for raw in specs:
        text = str(raw).strip()
        column, _, cuts_text = text.partition(":")
        column = column.strip()
        if not column:
            raise ValueError(f"{OPTION}: entry {raw!r} names no column; write a manifest column such as "
                             "'sex', or a numeric column with cut points such as 'age:0,18,65'")
        cuts: tuple[float, ...] = ()
        if ":" in text:
            try:
                cuts = tuple(float(c) for c in cuts_text.split(","))
            except ValueError:
                cuts = ()
            if not cuts or not all(map(math.isfinite, cuts)) or any(b <= a for a, b in zip(cuts, cuts[1:])):
                raise ValueError(f"{OPTION}: entry {raw!r}: after ':' give increasing numbers separated by "
                                 "commas, e.g. 'age:0,18,65'")
        if any(s.column == column for s in out):
            raise ValueError(f"{OPTION}: column {column!r} is named twice")
        out.append(SubgroupSpec(column, cuts))
    return out


def columns_of(records: Sequence, index: Sequence[int] | None = None) -> list[dict[str, str]]:
    """The extra manifest columns of each record (``Record.columns``), in ``index`` order if given."""
    chosen = records if index is None else [records[int(i)] for i in index]
    return [dict(getattr(r, "columns", ())) for r in chosen]


def check_columns(specs: Sequence[str], records: Sequence, source: str) -> None:
    """Before any training: every named column exists in ``source`` (the manifest), and one without
    cut points has few enough values to be a subgroup (not an id). ValueError naming eval.subgroups."""
    if not specs:
        return
    columns = columns_of(records)
    available = sorted({name for row in columns for name in row})
    for spec in parse_subgroups(specs):
        if not any(spec.column in row for row in columns):
            shown = ", ".join(available) if available else "none beyond path,label,split,patient_id"
            raise ValueError(f"{OPTION}: column {spec.column!r} is not in {source}; its extra columns: {shown}")
        if not spec.cuts:
            n = len({spec.group_of(row.get(spec.column, "")) for row in columns})
            if n > MAX_GROUPS:
                raise ValueError(f"{OPTION}: column {spec.column!r} of {source} has {n} distinct values; a "
                                 f"subgroup column has at most {MAX_GROUPS} (cut a numeric column into bands: "
                                 f"'{spec.column}:18,65')")


def _group_order(spec: SubgroupSpec, groups: np.ndarray) -> list[str]:
    found = set(groups.tolist())
    named = spec.bands() if spec.cuts else sorted(found - {MISSING})
    return [g for g in named if g in found] + ([MISSING] if MISSING in found else [])


def _too_small(counts: dict, class_names: Sequence[str]) -> str | None:
    few = [f"{counts['patients_per_class'][name]} {name}" for name in class_names
           if counts["patients_per_class"][name] < MIN_PATIENTS_PER_CLASS]
    if not few:
        return None
    return (f"too small for its intervals to mean anything: {' and '.join(few)} patient(s), fewer than "
            f"{MIN_PATIENTS_PER_CLASS} of a class")


def _figures(section: dict) -> dict:
    """The figures of a build_report section without its curves and bins: the whole split's
    report has those; per group they would repeat noise at a larger size."""
    calibration = {k: section["calibration"][k] for k in ("ece", "brier")}
    return {"metrics": section["metrics"], "calibration": calibration,
            "confusion_matrix": section["confusion_matrix"]}


def subgroup_report(
    probs: np.ndarray,
    labels: np.ndarray,
    patient_ids: np.ndarray | Sequence | None,
    class_names: Sequence[str],
    threshold: ThresholdChoice | None,
    columns: Sequence[Mapping[str, str]],
    specs: Sequence[str],
    **report_options,
) -> dict:
    """The ``subgroups`` section of test_report.json: per ``specs`` entry (as in eval.subgroups), per
    group of the images' manifest ``columns``, ``build_report`` of its images with the same
    operating point and ``report_options`` as the whole split, without its curves."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(columns) != len(labels):
        raise ValueError(f"columns must have one row per image ({len(labels)}); got {len(columns)}")
    ids = None if patient_ids is None else np.asarray(patient_ids, dtype=object)
    by = []
    for spec in parse_subgroups(specs):
        groups = np.array([spec.group_of(row.get(spec.column, "")) for row in columns], dtype=object)
        rows = []
        for group in _group_order(spec, groups):
            keep = groups == group
            report = build_report(probs[keep], labels[keep], None if ids is None else ids[keep], class_names,
                                  threshold, **report_options)
            note = _too_small(report["counts"], class_names)
            rows.append({"group": group, "too_small": note is not None, "note": note, "counts": report["counts"],
                         **_figures(report), "patient_level": report["patient_level"] and _figures(
                             report["patient_level"])})
        by.append({"column": spec.column, "spec": spec.text, "groups": rows})
    return {"min_patients_per_class": MIN_PATIENTS_PER_CLASS,
            "rule": f"a group with fewer than {MIN_PATIENTS_PER_CLASS} patients of a class is marked too small",
            "by": by}
