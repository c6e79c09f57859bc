"""The best run's test figures in the report and in `best`, read from its test_report.json (which
names no patient), never recomputed. A damaged one is named in one line; the rest is shown."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from evaluation.binomial import METHOD_NOTES
from evaluation.bootstrap import method_label
from rundir.layout import TEST_REPORT as REPORT_FILE
from sweeps.analysis.html_parts import _note
from sweeps.analysis.subgroups_html import subgroups_html

# What reading a test_report.json that lacks a key or holds a value of another type raises.
DAMAGE = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def damage(error: Exception) -> str:
    """One line about a damaged test_report.json."""
    what = f"no {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {str(error)[:120]}"
    return f"its {REPORT_FILE} is damaged ({what})"


def read_run_file(sweep_dir: Path, run: dict, name: str) -> Optional[dict]:
    """A JSON object the run wrote; None when it has none, {} for a damaged one (named where shown)."""
    if not run.get("run_dir"):
        return None
    try:
        data = json.loads((Path(sweep_dir) / run["run_dir"] / name).read_text())
    except OSError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _cell(figure: dict) -> tuple[str, str, str]:
    est = "n/a" if figure.get("estimate") is None else f"{figure['estimate']:.3f}"
    ci = "" if figure.get("ci_low") is None else f"{figure['ci_low']:.3f} – {figure['ci_high']:.3f}"
    return est, ci, method_label(str(figure.get("method", "")), figure.get("n_eff"))  # METHOD_NOTES says which


def ci_rows(report: dict) -> list[list[str]]:
    """Header + one row per figure (image level, then patient level when there is one)."""
    rows = [["figure", "estimate", "95% CI", "method"]]
    for prefix, section in (("", report), ("patient: ", report.get("patient_level"))):
        if not section:
            continue
        figures = {**section["metrics"], "ece": section["calibration"]["ece"],
                   "brier": section["calibration"]["brier"]}
        rows += [[prefix + name, *_cell(fig)] for name, fig in figures.items()]
    return rows


def caption(report: dict) -> str:
    counts, th = report["counts"], report.get("threshold")
    per_class = ", ".join(f"{name}: {counts['images_per_class'][name]} images / "
                          f"{counts['patients_per_class'][name]} patients" for name in report["class_names"])
    text = (f"Test split: {counts['images']} images of {counts['patients']} patients ({per_class}). "
            f"Intervals: {report['ci']['method']} patient-level bootstrap, {report['ci']['n_resamples']} "
            f"resamples by {report['ci']['resampling_unit']}; the method column names each figure's. ")
    used = {fig.get("method") for section in (report, report.get("patient_level") or {}) if section
            for fig in [*section["metrics"].values(), *section["calibration"].values()]
            if isinstance(fig, dict)}  # what each method other than the bootstrap's means:
    text += " ".join(f"{m}: {note}." for m, note in METHOD_NOTES.items() if m in used)
    if th:
        how = f"fallback ({th['reason']})" if th["fallback"] else f"rule {th['rule']}, chosen on validation"
        text += f" Threshold {th['value']:.4g}: {how}."
    patients = report.get("patient_level") or {}
    if patients.get("threshold"):
        text += (f" Patient level: {patients['aggregation']} of each patient's images, threshold "
                 f"{patients['threshold']['value']:.4g} ({patients['threshold_note']}).")
    return text


def roc_figure(report: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, curve in report["roc"].items():
        label = "ROC" if name == "binary" else f"{name} vs rest"
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label))
        point = curve.get("operating_point")
        if point and point.get("fpr") is not None:
            fig.add_trace(go.Scatter(x=[point["fpr"]], y=[point["tpr"]], mode="markers", name="operating point",
                                     marker={"size": 12, "symbol": "x", "color": "#b00020"},
                                     hovertext=[f"threshold {point['threshold']:.4g}"]))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"},
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title="ROC curve (test)", xaxis_title="1 - specificity", yaxis_title="sensitivity",
                      width=560, height=480)
    return fig


def reliability_figure(report: dict):
    import plotly.graph_objects as go

    bins = report["calibration"]["reliability"]
    used = [i for i, n in enumerate(bins["count"]) if n]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[bins["mean_predicted"][i] for i in used], y=[bins["observed"][i] for i in used],
                             mode="lines+markers", name="observed",
                             hovertext=[f"{bins['count'][i]} images" for i in used]))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"},
                             name="perfect calibration", hoverinfo="skip"))
    fig.update_layout(title="Reliability diagram (test)", xaxis_title="mean predicted probability",
                      yaxis_title="observed frequency", width=560, height=480)
    return fig


def section_html(report: Optional[dict], figure: Callable, table: Callable[[list], str]) -> str:
    if report is None:
        return _note(f"The best run has no {REPORT_FILE} (no test split, run.test_after_fit off, or the run "
                     "was stopped before its test).")
    try:  # everything that reads the report, before any figure is rendered (the first carries plotly.js)
        text, rows, cm = caption(report), ci_rows(report), report["confusion_matrix"]
        confusion = [["true \\ predicted", *cm["labels"]],
                     *([name, *row] for name, row in zip(cm["labels"], cm["matrix"]))]
        roc, reliability = roc_figure(report), reliability_figure(report)
    except DAMAGE as e:
        return _note(f"The best run's test figures are not shown: {damage(e)}.")
    return "\n".join([
        f"<p>{html.escape(text)}</p>",
        table(rows),
        figure(roc),
        figure(reliability),
        "<h3>Confusion matrix at the threshold (test)</h3>",
        table(confusion),
        subgroups_html(report, figure, table),
    ])
