"""Internal against external test: which figures changed at the other site (README "External
validation"). Numpy-free arithmetic on two finished reports (``build_report``): nothing here
looks at data, and nothing is chosen.

A figure *changed* when the 95% interval of its difference (external - internal) excludes 0.
The two test sets hold different patients (two sites), so the difference's interval comes
from the two intervals by MOVER, the method of variance estimates recovery (Zou & Donner 2008,
Stat Med 27:1693; Newcombe 1998 method 10 for proportions): each side's distance from its
estimate to the relevant end adds in quadrature. It keeps each side's own method (patient
bootstrap or Clopper-Pearson at 0/1), so its coverage follows theirs, and it accounts for the
external sample's own noise, which "the external estimate lies outside the internal interval"
ignores (that rule flags a change on a small external set far more often than 5% of the time
when nothing changed: tests/test_external.py measures both).
"""

from __future__ import annotations

import math
from typing import Optional

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


def _figures(section: Optional[dict]) -> dict[str, dict]:
    if not section:
        return {}
    return {**section["metrics"], "ece": section["calibration"]["ece"], "brier": section["calibration"]["brier"]}


def _rows(internal: Optional[dict], external: Optional[dict]) -> list[dict]:
    mine, theirs = _figures(internal), _figures(external)
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


def _cell(fig: dict) -> str:
    if fig.get("estimate") is None:
        return "n/a"
    ci = "" if fig.get("ci_low") is None else f" ({fig['ci_low']:.3f}-{fig['ci_high']:.3f})"
    return f"{fig['estimate']:.3f}{ci}"


def format_comparison(comparison: dict, name: str = "external") -> str:
    """The side-by-side table for the console and the model card's plain-text twin."""
    lines = [f"internal vs {name} test (same operating point, from site A's validation; "
             "changed: the difference's 95% interval excludes 0):",
             f"  {'figure':<22}{'internal':<24}{name:<24}{'difference':<30}changed"]
    for level, prefix in (("image_level", ""), ("patient_level", "patient: ")):
        for row in comparison[level]:
            diff = row["difference"]
            shown = "n/a" if diff is None else f"{diff['estimate']:+.3f} ({diff['ci_low']:+.3f} to {diff['ci_high']:+.3f})"
            flag = {True: "CHANGED", False: "-", None: "n/a"}[row["changed"]]
            lines.append(f"  {prefix + row['figure']:<22}{_cell(row['internal']):<24}{_cell(row['external']):<24}"
                         f"{shown:<30}{flag}")
    prev = comparison["prevalence"]
    if prev["internal"] is not None:
        lines.append(f"  prevalence (images): internal {prev['internal']:.3f}, {name} {prev['external']:.3f} "
                     "(PPV and NPV follow it)")
    return "\n".join(lines)
