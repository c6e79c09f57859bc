"""The report's subgroup section: a forest plot of the main test figures per subgroup and the counts
each group rests on, from test_report.json's ``subgroups`` (evaluation/subgroups.py), nothing
recomputed; the only values of a subgroup column shown are its group labels."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Optional

# The figures a reader compares across groups first; those the task has are shown, in this order.
FOREST_FIGURES = ("auroc", "sensitivity", "specificity", "balanced_acc")
MAX_PANELS = 3
SMALL_COLOUR, COLOUR = "#9e9e9e", "#1f4e9c"


def _rows(section: dict) -> list[tuple[str, dict]]:
    """(axis label, group) for every group, top to bottom in the order of the report."""
    return [(f"{col['column']}: {g['group']} ({g['counts']['patients']} pt)", g)
            for col in section["by"] for g in col["groups"]]


def forest_figure(report: dict):
    """One panel per figure; a group marked too small is drawn grey with a hollow marker."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [name for name in FOREST_FIGURES if name in report["metrics"]][:MAX_PANELS]
    rows = _rows(report["subgroups"])
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names, horizontal_spacing=0.03)
    labels = [label for label, _ in rows]
    for col, name in enumerate(names, start=1):
        for small in (False, True):
            chosen = [(label, g["metrics"].get(name) or {}) for label, g in rows if g["too_small"] == small]
            chosen = [(label, iv) for label, iv in chosen if iv.get("estimate") is not None]
            if not chosen:
                continue
            est = [iv["estimate"] for _, iv in chosen]
            high = [(iv["ci_high"] - iv["estimate"]) if iv["ci_high"] is not None else 0 for _, iv in chosen]
            low = [(iv["estimate"] - iv["ci_low"]) if iv["ci_low"] is not None else 0 for _, iv in chosen]
            fig.add_trace(go.Scatter(
                x=est, y=[label for label, _ in chosen], mode="markers",
                error_x={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
                marker={"color": SMALL_COLOUR if small else COLOUR, "size": 9,
                        "symbol": "circle-open" if small else "square"},
                name="too small to compare" if small else "subgroup", legendgroup=str(small),
                showlegend=col == 1, hovertemplate="%{y}<br>%{x:.3f}<extra></extra>"), row=1, col=col)
        overall = (report["metrics"].get(name) or {}).get("estimate")
        if overall is not None:
            fig.add_vline(x=overall, line={"dash": "dash", "color": "#b00020", "width": 1}, row=1, col=col)
        fig.update_xaxes(range=[-0.02, 1.02], row=1, col=col)
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1], type="category")
    fig.update_layout(title="Test figures per subgroup (95% patient-level CI; dashed: whole test split)",
                      height=max(320, 60 + 34 * len(labels)), width=min(1200, 380 + 260 * len(names)))
    return fig


def count_rows(report: dict) -> list[list[str]]:
    names = report["class_names"]
    rows = [["subgroup", "images", "patients", *[f"{n} patients" for n in names], "note"]]
    for label, g in _rows(report["subgroups"]):
        c = g["counts"]
        rows.append([label.rsplit(" (", 1)[0], c["images"], c["patients"],
                     *[c["patients_per_class"][n] for n in names], g["note"] or ""])
    return rows


def subgroups_html(report: Optional[dict], figure: Callable, table: Callable[[list], str]) -> str:
    """The section's HTML; empty when the run asked for no subgroups."""
    if not report or not report.get("subgroups"):
        return ""
    section = report["subgroups"]
    text = (f"Each group evaluated as the whole test split, at the same operating point (chosen on "
            f"validation). {section['rule'].capitalize()} (grey): with fewer, even a perfect result's "
            f"exact interval reaches below 0.5.")
    return "\n".join(["<h3>Subgroups</h3>", f"<p>{html.escape(text)}</p>", figure(forest_figure(report)),
                      table(count_rows(report))])
