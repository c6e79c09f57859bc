"""`python -m sweeps report DIR`: one self-contained HTML page about an offline sweep (README, "Sweeps
without a W&B server", Watching; "Reading the results"). plotly.js is inlined once, so the page opens
on an air-gapped machine; it shows parameters, metrics and run directory names only (paths masked).
A sweep with no completed run still gets a page, so it can be regenerated while the sweep runs."""

from __future__ import annotations

import html
import itertools
import json
import math
import time
import warnings
from pathlib import Path
from typing import Optional

import yaml

from rundir.atomic import write_atomic
from rundir.layout import COMPLETED, TEST_OVERLAYS, TEST_REPORT
from sweeps.analysis.heldout import read_run_file, section_html
from sweeps.analysis.html_parts import STYLE, _Figures, _note, _table
from sweeps.analysis.overlays_html import overlays_html
from sweeps.analysis.results import (
    best_config,
    best_run,
    fmt,
    load_offline_runs,
    rank,
    ranked,
    runs_table,
    shown_params,
)
from sweeps.errors import UsageError
from sweeps.files.sweep import Sweep
from sweeps.text import mask_file_names

NAMED_CURVES = 20  # learning curves in colour and in the legend, the best runs'; 1,000 colours help no one
GREY = {"color": "rgba(140,140,140,0.3)", "width": 1}  # the other runs' curves


def _tick_step(count: int) -> int:
    """Whole-number ticks (runs, epochs), about a dozen at most."""
    return max(1, math.ceil(count / 12))


def history_figure(sweep: Sweep, runs: list[dict]):
    import plotly.graph_objects as go

    metric, goal = sweep.metric, sweep.goal
    done = sorted(filter(ranked, runs), key=lambda r: r["number"])
    fig = go.Figure()
    for state, symbol in (("finished", "circle"), ("stopped", "x")):
        part = [r for r in done if r["state"] == state]
        if part:
            # cross-validated runs: error bars of one standard deviation across folds
            spread = [r.get("std") or 0.0 for r in part]
            fig.add_scatter(x=[r["number"] for r in part], y=[r["value"] for r in part], mode="markers",
                            name=state, marker={"symbol": symbol, "size": 9},
                            text=[f"run {r['name']}" for r in part],
                            error_y={"type": "data", "array": spread, "visible": any(spread)})
    best_so_far = list(itertools.accumulate((r["value"] for r in done), max if goal == "maximize" else min))
    fig.add_scatter(x=[r["number"] for r in done], y=best_so_far, mode="lines", name="best so far",
                    line={"shape": "hv", "color": "#d62728"})
    fig.update_layout(title="Optimization history", xaxis_title="run (trial number)", yaxis_title=metric)
    fig.update_xaxes(dtick=_tick_step(max((r["number"] for r in done), default=0) + 1))
    return fig


def _distribution(distribution: str, values: list):
    import optuna.distributions as d

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        lo, hi = min(values), max(values)
        log = "log" in distribution and lo > 0
        if all(isinstance(v, int) for v in values) and (not log or lo >= 1):
            return d.IntDistribution(lo, hi, log=log)
        return d.FloatDistribution(float(lo), float(hi), log=log)
    choices = list(dict.fromkeys(values))
    return d.CategoricalDistribution(sorted(choices, key=lambda c: (c is not None, str(c))))


def _choice(value):
    """A parameter value as an Optuna choice: a mapping or list (a callback with its arguments, an
    objective's weights) becomes its JSON text; Optuna's choices are None, bool, int, float, str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def study_of(sweep: Sweep, runs: list[dict]):
    """The completed runs with the parameters they really used, as the in-memory study Optuna plots."""
    import optuna

    goal = sweep.goal
    done = list(filter(ranked, runs))
    applied = [{k: _choice(v) for k, v in shown_params(sweep, r).items()} for r in done]
    dists = {}
    for name in dict.fromkeys(n for a in applied for n in a):
        param = sweep.parameters.get(name)
        dists[name] = _distribution(param.distribution if param else "", [a[name] for a in applied if name in a])
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" on the console
    try:
        study = optuna.create_study(direction=goal)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for run, params in zip(done, applied):
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: dists[n] for n in params}, value=run["value"],
            user_attrs={"run": run["name"]}))
    return study


def importance_figure(study, metric: str):
    import optuna
    import plotly.graph_objects as go

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PedAnova is marked experimental
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    if not importances:
        return None
    names = list(importances)[::-1]  # largest on top
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h",
                           text=[f"{importances[n]:.2f}" for n in names], textposition="auto"))
    fig.update_layout(title=f"Parameter importance for {metric} (PED-ANOVA)", xaxis_title="importance",
                      height=max(300, 40 * len(names) + 120))
    return fig


def curves_figure(sweep: Sweep, runs: list[dict]):
    import plotly.graph_objects as go

    metric = sweep.metric
    named = {r["name"] for r in rank(runs, sweep.goal)[:NAMED_CURVES]}
    fig = go.Figure()
    dash = {"finished": "solid", "stopped": "dash"}
    for run in sorted(runs, key=lambda r: r["number"]):
        if not run["history"]:
            continue
        epochs, shown = list(range(1, len(run["history"]) + 1)), run["name"] in named
        fig.add_scatter(x=epochs, y=run["history"], mode="lines", name=f"{run['name']} ({run['state']})",
                        legendgroup=run["name"], showlegend=shown,
                        line={"dash": dash.get(run["state"], "dot"), **({} if shown else GREY)})
        if run["state"] == "stopped":
            fig.add_scatter(x=epochs[-1:], y=run["history"][-1:], mode="markers", legendgroup=run["name"],
                            showlegend=False, name=f"{run['name']} stopped", marker={"symbol": "x", "size": 11
                            if shown else 6, "color": "black" if shown else GREY["color"]})
    fig.update_xaxes(dtick=_tick_step(max(len(r["history"]) for r in runs)))
    grey = f"; grey: all but the {NAMED_CURVES} best" if len(runs) > NAMED_CURVES else ""
    fig.update_layout(title=f"Learning curves: {metric} per validation epoch (dashed + x: stopped early{grey})",
                      xaxis_title="validation epoch", yaxis_title=metric)
    return fig


def _duration(seconds: float) -> str:
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h {rest // 60:02d}m {rest % 60:02d}s" if h else f"{rest // 60}m {rest % 60:02d}s"


def summary_html(sweep: Sweep, runs: list[dict], best: Optional[dict]) -> str:
    states = list(dict.fromkeys([*COMPLETED, "failed", *(r["state"] for r in runs)]))
    walls = [r["wall_s"] for r in runs if isinstance(r.get("wall_s"), (int, float))]
    rows = [["runs", len(runs)], *([s, sum(r["state"] == s for r in runs)] for s in states),
            ["epochs trained", sum(len(r["history"]) for r in runs)],
            ["wall time (sum over runs)", _duration(sum(walls)) if walls else "-"]]
    parts = [_table(rows, header=False)]
    if best is None:
        parts.append(_note("No completed run yet: the best configuration appears when a run finishes."))
        return "\n".join(parts)
    parts.append(f"<h3>Best run {html.escape(best['name'])} ({html.escape(best['state'])}): "
                 f"{html.escape(sweep.metric)} = {html.escape(fmt(best['value']))}</h3>")
    used = shown_params(sweep, best)
    parts.append(_table([["parameter", "value"], *([k, fmt(v)] for k, v in used.items())]))
    try:
        snippet = yaml.safe_dump(best_config(sweep, best["config"]), sort_keys=False)
    except UsageError as e:
        parts.append(_note(f"Not exportable: {e}"))
        return "\n".join(parts)
    parts.append("<p>As a LightningCLI config (<code>python -m sweeps best DIR --export best.yaml</code>):</p>"
                 f"<pre>{html.escape(snippet)}</pre>")
    return "\n".join(parts)


def render(sweep_dir: Path, sweep: Sweep, runs: list[dict]) -> str:
    metric, goal = sweep.metric, sweep.goal
    figure = _Figures()
    done = list(filter(ranked, runs))
    best = best_run(sweep, runs)
    name = sweep.name or sweep_dir.name
    sections = [("summary", "Summary", summary_html(sweep, runs, best))]
    if best is not None:  # rendered in page order: the first figure on the page carries plotly.js
        report = read_run_file(sweep_dir, best, TEST_REPORT)
        sections.append(("test", f"Test figures of the best run ({html.escape(best['name'])})",
                         section_html(report, figure, _table)))
        sections.append(("overlays", "Where the model looks (test images chosen to teach)",
                         overlays_html(read_run_file(sweep_dir, best, TEST_OVERLAYS), (report or {}).get("class_names"))))

    if done:
        sections.append(("history", "Optimization history", figure(history_figure(sweep, runs))))
        study = study_of(sweep, runs)
        sections.append(("parallel", "Parallel coordinates", figure(
            __import__("optuna").visualization.plot_parallel_coordinate(study, target_name=metric))))
    else:
        wait = _note("No completed run yet: the optimization history and parallel coordinates need one.")
        sections += [("history", "Optimization history", wait), ("parallel", "Parallel coordinates", wait)]

    if len(done) < 2:
        body = _note(f"Parameter importance needs at least 2 completed runs; this sweep has {len(done)}.")
    else:
        try:
            fig = importance_figure(study, metric)
            body = figure(fig) if fig else _note("No swept parameter varied between the completed runs.")
        except Exception as e:  # too few distinct values for the evaluator, etc.
            body = _note(f"Parameter importance could not be computed: {mask_file_names(e)}")
    sections.append(("importance", "Parameter importance", body))

    body = figure(curves_figure(sweep, runs)) if any(r["history"] for r in runs) else _note("No run has validated yet.")
    failed = [r for r in runs if r["state"] not in COMPLETED and r["state"] != "running"]
    if failed:
        body += "<h3>Runs that did not complete</h3><ul>" + "".join(
            f'<li class="failed">{html.escape(r["name"])}: {html.escape(r["state"])}'
            f'{html.escape(" - " + mask_file_names(r["reason"])) if r["reason"] else ""}</li>' for r in failed) + "</ul>"
    sections.append(("curves", "Learning curves", body))

    rows = runs_table(sweep, runs)
    rows = [rows[0], *([r[0], mask_file_names(r[1]), *r[2:]] for r in rows[1:])]
    sections.append(("runs", "All runs (best first)", _table(rows) if runs else _note("No runs yet.")))

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (f"<h1>Sweep {html.escape(name)}</h1><p>{html.escape(sweep.method)} search, "
            f"{html.escape(metric)} ({html.escape(goal)}), {len(runs)} runs; generated {stamp}.</p>")
    body = "\n".join(f'<section id="{sid}"><h2>{title}</h2>\n{content}</section>' for sid, title, content in sections)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>Sweep {html.escape(name)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{head}\n{body}\n</body></html>\n")


def write_report(sweep_dir: Path, out: Optional[str] = None) -> Path:
    """Write the report of an offline sweep directory (default SWEEP_DIR/report.html)."""
    sweep_dir = Path(sweep_dir)
    sweep, runs = load_offline_runs(sweep_dir)
    path = Path(out) if out else sweep_dir / "report.html"
    if not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: directory {path.parent} does not exist")
    try:
        import plotly  # noqa: F401
    except ImportError as e:
        raise UsageError("the report needs plotly: pip install plotly") from e
    try:
        write_atomic(path, render(sweep_dir, sweep, runs))
    except OSError as e:  # a directory of that name, a read-only file system, a full disk
        raise UsageError(f"cannot write {path}: {e.strerror or e}" + (" (--out)" if out else "")) from None
    return path
