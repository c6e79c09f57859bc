"""`python -m sweeps best DIR|ENTITY/PROJECT/ID [--export best.yaml]`: the runs of a sweep,
best first, and what the best run used (from the config it saved) as a LightningCLI config."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import yaml

from rundir.atomic import write_atomic
from rundir.layout import TEST_REPORT
from sweeps.analysis.heldout import DAMAGE, damage, read_run_file
from sweeps.analysis.results import (
    UNREADABLE,
    best_config,
    best_run,
    fmt,
    load_offline_runs,
    runs_table,
    shown_params,
)
from sweeps.analysis.wandb_runs import load_wandb_runs
from sweeps.errors import SweepError, UsageError
from sweeps.files.sweep import Sweep
from sweeps.text import visible

_WANDB_PATH = re.compile(r"^[\w.-]+/[\w.-]+/[\w-]+$")


def _print_table(rows: list[list[str]]) -> None:
    rows = [[visible(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    widths[1] = min(widths[1], 40)  # a long failure reason must not push the params off screen
    for r in rows:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(r, widths)]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())


def _reproduce(sweep: Sweep, export: str) -> str:
    base = " ".join(f"--config {c}" for c in sweep.config_files) or "--config <your config>"
    return f"python cli.py fit {base} --config {export}"


def _show_best(source: str, export: Optional[str]) -> int:
    if export and not Path(export).parent.is_dir():
        raise UsageError(f"cannot export to {export}: directory {Path(export).parent} does not exist")
    local = Path(source)
    if local.exists() or not _WANDB_PATH.match(source):
        sweep, runs = load_offline_runs(local)
    else:
        sweep, runs = load_wandb_runs(source)
    counts = {s: sum(r["state"] == s for r in runs) for s in dict.fromkeys(r["state"] for r in runs)}
    print(visible(f"sweep {sweep.name or source}: {len(runs)} runs "
                  f"({', '.join(f'{n} {s}' for s, n in counts.items()) or 'none'}); {sweep.metric}, {sweep.goal}"))
    if runs:
        _print_table(runs_table(sweep, runs))
    for run in runs:  # the table cuts long reasons
        if run["state"] == UNREADABLE:
            print(f"run {run['name']} is unreadable: {run['reason']}")
    best = best_run(sweep, runs)
    if best is None:
        raise UsageError(f"no completed run in {source} yet (finished or stopped runs have a {sweep.metric})")
    print("\n" + visible(f"best: run {best['name']} ({best['state']}), {sweep.metric} = {fmt(best['value'])}"))
    for name, value in shown_params(sweep, best).items():
        print(visible(f"  {name}: {fmt(value)}"))
    if best["run_dir"]:
        print(visible(f"run dir: {local / best['run_dir']}"))
        report = read_run_file(local, best, TEST_REPORT)
        if report is not None:
            from evaluation import format_table

            try:
                figures = format_table(report)
            except DAMAGE as e:
                figures = f"not shown: {damage(e)}"
            print(f"\ntest figures of the best run (operating point chosen on validation):\n"
                  f"{visible(figures, keep_newlines=True)}")
    if export:
        try:
            config = best_config(sweep, best["config"])
        except UsageError as e:
            raise UsageError(f"cannot export run {best['name']}: {e}") from None
        # `visible`: no text in a YAML comment that YAML reads as a line break (\n, \r, NEL, LS, PS)
        header = (f"# Best run of sweep {visible(sweep.name or '')}: {visible(best['name'])}, "
                  f"{visible(sweep.metric)} = {fmt(best['value'])}\n"
                  f"# Reproduce: {visible(_reproduce(sweep, Path(export).name))}\n")
        try:
            write_atomic(Path(export), header + yaml.safe_dump(config, sort_keys=False,
                                                               default_flow_style=False))
        except OSError as e:  # a directory of that name, a read-only file system, a full disk
            raise UsageError(f"cannot write {export}: {e.strerror or e} (--export)") from None
        print(f"wrote {export}; train it with: {_reproduce(sweep, export)}")
    return 0


def show_best(source: str, export: Optional[str] = None) -> int:
    """Print the runs best first and the best run; optionally export it. Returns the exit code."""
    try:
        return _show_best(source, export)
    except SweepError as e:
        print(f"error: {visible(e, keep_newlines=True)}", file=sys.stderr)
        return 2
