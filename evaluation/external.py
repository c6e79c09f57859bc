"""Internal against external test (README, "External validation"): arithmetic on two finished
reports; nothing here looks at data, and nothing is chosen.

A figure *changed* when the 95% interval of its difference (external - internal) excludes 0. The
sites hold different patients, so that interval combines the two reports' own intervals by MOVER
(Zou & Donner 2008, Stat Med 27:1693; Newcombe 1998 method 10 for proportions), keeping each
side's method and accounting for the external set's own noise, which "the external estimate lies
outside the internal interval" ignores (tests/test_external.py measures both rules' error rates).
"""

from __future__ import annotations

import math
from typing import Optional

from evaluation.report import figures, with_interval

# What a reader asks of an external test: discrimination, the operating point, calibration.
COMPARED = ("auroc", "sensitivity", "specificity", "ppv", "npv", "ece", "brier")


def mover_difference(internal: dict, external: dict) -> Optional[tuple[float, float, float]]:
    """(external - internal, low, high) from two intervals {estimate, ci_low, ci_high} of
    independent samples; None when either is undefined."""
    values = [d.get(k) for d in (internal, external) for k in ("estimate", "ci_low", "ci_high")]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    t_i, l_i, u_i, t_e, l_e, u_e = values
    diff = t_e - t_i
    return diff, diff - math.hypot(t_e - l_e, u_i - t_i), diff + math.hypot(u_e - t_e, t_i - l_i)


def _rows(internal: Optional[dict], external: Optional[dict]) -> list[dict]:
    mine, theirs = (figures(section) if section else {} for section in (internal, external))
    rows = []
    for name in COMPARED:
        if name not in mine or name not in theirs:
            continue
        diff = mover_difference(mine[name], theirs[name])
        rows.append({"figure": name, "internal": _short(mine[name]), "external": _short(theirs[name]),
                     "difference": None if diff is None else dict(zip(("estimate", "ci_low", "ci_high"), diff)),
                     "changed": None if diff is None else not diff[1] <= 0.0 <= diff[2]})
    return rows


def _short(figure: dict) -> dict:
    return {k: figure.get(k) for k in ("estimate", "ci_low", "ci_high", "method")}


def _prevalence(report: dict) -> Optional[float]:
    if report["task"] != "binary":
        return None
    counts = report["counts"]["images_per_class"]
    return counts[report["class_names"][1]] / max(1, report["counts"]["images"])


def compare_reports(internal: dict, external: dict) -> dict:
    """Side by side per figure (image level, and patient level when both have one), with the
    difference's 95% MOVER interval and whether it excludes 0. Both reports must use the same
    operating point (the external one's comes from site A's validation, as the internal one's)."""
    return {
        "rule": "changed: the 95% interval of (external - internal) excludes 0; interval by MOVER "
                "(Zou & Donner 2008) from the two reports' own intervals, samples independent",
        "image_level": _rows(internal, external),
        "patient_level": _rows(internal.get("patient_level"), external.get("patient_level")),
        "prevalence": {"internal": _prevalence(internal), "external": _prevalence(external)},
    }


def format_difference(diff: Optional[dict]) -> str:
    if diff is None:
        return "n/a"
    return f"{diff['estimate']:+.3f} ({diff['ci_low']:+.3f} to {diff['ci_high']:+.3f})"


def format_comparison(comparison: dict, name: str = "external") -> str:
    """The side-by-side table for the console and the model card's plain-text twin."""
    lines = [f"internal vs {name} test (same operating point, from site A's validation; "
             "changed: the difference's 95% interval excludes 0):",
             f"  {'figure':<22}{'internal':<24}{name:<24}{'difference':<30}changed"]
    for level, prefix in (("image_level", ""), ("patient_level", "patient: ")):
        for row in comparison[level]:
            flag = {True: "CHANGED", False: "-", None: "n/a"}[row["changed"]]
            lines.append(f"  {prefix + row['figure']:<22}{with_interval(row['internal']):<24}"
                         f"{with_interval(row['external']):<24}"
                         f"{format_difference(row['difference']):<30}{flag}")
    prev = comparison["prevalence"]
    if prev["internal"] is not None:
        lines.append(f"  prevalence (images): internal {prev['internal']:.3f}, {name} {prev['external']:.3f} "
                     "(PPV and NPV follow it)")
    return "\n".join(lines)
