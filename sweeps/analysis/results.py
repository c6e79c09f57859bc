"""The runs of a sweep as one list of records; ranking (by the best value in history, as W&B's
bayes), the table of runs, and what a run used as a LightningCLI config, read from the config it
saved, never rebuilt from its command line. A damaged record makes its run `unreadable`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import yaml

from models.metric_names import DEFAULT_METRIC
from rundir.layout import COMPLETED, CONFIG_FILE, RUN_RECORD
from sweeps.contract.history import HISTORY_FILE, best_of, read_history
from sweeps.errors import UsageError
from sweeps.files.io import load_sweep
from sweeps.files.schema import NULL
from sweeps.files.sweep import Sweep

UNREADABLE = "unreadable"  # a damaged run record: shown, never ranked
_NOT_EXPORTED = ("sweep", "run", "config")  # how to sweep, where to write: not what was trained
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # a run's config is a few hundred lines


def _lookup(config: Optional[dict], path: str) -> tuple[bool, Any]:
    """A dotted option in a nested config (config.yaml) or a flat one (a W&B run's config)."""
    if isinstance(config, dict) and path in config:
        return True, config[path]
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def used_settings(sweep: Sweep, config: Optional[dict], keys: Optional[list[str]] = None) -> dict:
    """The swept options (or `keys`) as the run's saved config holds them; a conditional child
    whose parent's value did not allow it is left out (its value came from the configs)."""
    values = {}
    for key in keys if keys is not None else list(sweep.parameters):
        found, value = _lookup(config, key)
        if found:
            values[key] = value
    for condition in sweep.conditions:
        known, parent_value = _lookup(config, condition.parent)
        if condition.child in values and known and not condition.holds(parent_value):
            del values[condition.child]
    return values


def shown_params(sweep: Sweep, run: dict) -> dict:
    """What a run used, or the values it was given when it saved no config (failed early, not cli.py)."""
    if run.get("config") is not None:
        return used_settings(sweep, run["config"])
    return {k: None if v == NULL else v for k, v in run["params"].items()}


def best_config(sweep: Sweep, config: Optional[dict]) -> dict:
    """The nested LightningCLI config of what a run used: its swept options and the options the
    sweep's command fixes (cv.folds, ...), without sweep.*/run.* settings."""
    if not isinstance(config, dict):
        raise UsageError("the run saved no readable config.yaml, so what it used is not known; export another run "
                         "or rerun it")
    nested: dict = {}
    for path, value in used_settings(sweep, config, [*sweep.parameters, *sweep.fixed_options]).items():
        if path.split(".")[0] in _NOT_EXPORTED:
            continue
        *parents, leaf = path.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    order = {"seed_everything": 0, "trainer": 1, "model": 2, "data": 3}
    return dict(sorted(nested.items(), key=lambda kv: order.get(kv[0], 9)))


# ---- offline sweep directories --------------------------------------------------------------


def record_problem(attrs: Any) -> Optional[str]:
    """What makes a run record (run.json, a trial's facts) unreadable, or None."""
    if not isinstance(attrs, dict):
        return f"run.json is not a JSON object but a {type(attrs).__name__}"
    for key, kind in (("history", list), ("params", dict), ("state", str), ("run_dir", str)):
        if attrs.get(key) is not None and not isinstance(attrs[key], kind):
            return f"its record's {key} is not a {kind.__name__} ({type(attrs[key]).__name__})"
    run_dir = Path(attrs.get("run_dir") or "runs")
    if run_dir.is_absolute() or ".." in run_dir.parts:
        return "its record's run_dir is not inside the sweep directory"
    return None


def _run_record(sweep_dir: Path, sweep: Sweep, number: int, attrs: Any, value: Optional[float],
                fallback_params: dict, run_dir: str, problem: Optional[str] = None) -> dict:
    problem = problem or record_problem(attrs)
    if problem is not None:
        return {"number": number, "name": Path(run_dir).name, "state": UNREADABLE, "value": None, "history": [],
                "params": {}, "run_dir": run_dir, "reason": problem, "wall_s": None, "std": None, "config": None}
    run_dir = attrs.get("run_dir") or run_dir
    metric, goal = sweep.metric or DEFAULT_METRIC, sweep.goal
    history = [float(v) for v in attrs.get("history") or [] if isinstance(v, (int, float))]
    if not history:  # a run still going: its history file is the live view
        history = [v for v in read_history(sweep_dir / run_dir / HISTORY_FILE, metric) if v is not None]
    state = attrs.get("state") or ("finished" if value is not None else "running")
    if value is None and state in COMPLETED:
        value = best_of(history, goal)
    wall = attrs.get("wall_s")
    return {
        "number": number,
        "name": Path(run_dir).name,
        "state": state,
        "value": value,
        "history": history,
        "params": dict(attrs.get("params") or fallback_params),
        "run_dir": run_dir,
        "reason": None if attrs.get("reason") is None else str(attrs["reason"]),
        "wall_s": wall if isinstance(wall, (int, float)) and not isinstance(wall, bool) else None,
        "std": fold_spread(sweep_dir / run_dir / HISTORY_FILE, metric, value),
        "config": _saved_config(sweep_dir / run_dir),
    }


def _saved_config(run_dir: Path) -> Optional[dict]:
    """The config the run saved, or None (not written yet, not cli.py, damaged)."""
    try:
        config = yaml.load((run_dir / CONFIG_FILE).read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def fold_spread(history_file: Path, metric: str, value: Optional[float]) -> Optional[float]:
    """A cross-validated run's standard deviation across folds at its best epoch (the row whose
    fold mean is the run's value), from `<metric>_std` in its history; None for other runs."""
    try:  # every row of a cross-validated run holds both (training/cv.py), so the two lists pair up
        pairs = zip(read_history(history_file, metric), read_history(history_file, f"{metric}_std"))
    except UnicodeDecodeError:
        return None
    return next((std for mean, std in pairs if value is not None and mean == value), None)


def read_sweep(sweep_file: Path) -> Sweep:
    """The sweep.yaml the runner wrote into a sweep directory."""
    if not sweep_file.is_file():
        raise UsageError(f"{sweep_file.parent} is not a sweep directory: no {sweep_file}")
    return load_sweep(sweep_file)


def load_offline_runs(sweep_dir: str | Path) -> tuple[Sweep, list[dict]]:
    """(the sweep, its runs in trial order) from optuna.db, else (--storage URL, lost trials) run.json."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} is not a directory; give an offline sweep directory or ENTITY/PROJECT/SWEEP_ID")
    sweep_file = sweep_dir / "sweep.yaml"
    sweep = read_sweep(sweep_file)
    db = sweep_dir / "optuna.db"
    runs, stored = [], db.is_file() and db.stat().st_size > 0  # 0 bytes (truncated): opening it writes tables
    if stored:
        import optuna

        storage = f"sqlite:///{db.resolve()}"
        names = _study_names(db, storage)
        name = sweep.name
        if name not in names:
            if len(names) != 1:
                raise UsageError(f"{db} holds studies {names}, none named {name!r} as in {sweep_file}")
            name = names[0]
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            if trial.state == optuna.trial.TrialState.FAIL and attrs.get("state") in (None, "running"):
                attrs = dict(attrs, state="interrupted")  # failed by a heartbeat check: its runner died
            runs.append(_run_record(sweep_dir, sweep, trial.number, attrs, trial.value, trial.params,
                                    f"runs/{trial.number:04d}"))
    if not runs:  # no optuna.db, or one whose trials were lost (emptied, or a new study in their place)
        runs = _recorded_runs(sweep_dir, sweep)
    if not runs and not stored:
        raise UsageError(f"{sweep_dir} is not a sweep directory: no optuna.db and no runs/*/run.json")
    return sweep, runs


def _study_names(db: Path, storage: str) -> list[str]:
    """The studies in an optuna.db; a damaged file is an error that says what to do."""
    import optuna
    import sqlalchemy.exc

    try:
        return optuna.get_all_study_names(storage)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]  # not a database, damaged, another Optuna's schema
        raise UsageError(f"cannot read the sweep storage {db}: {type(e).__name__}: {first}. If it is damaged, "
                         f"move it aside: the runs are then read from {db.parent / 'runs'}/*/run.json") from None


def _recorded_runs(sweep_dir: Path, sweep: Sweep) -> list[dict]:
    """The runs from their runs/*/run.json records (what the runner writes next to the storage)."""
    runs = []
    for i, path in enumerate(sorted((sweep_dir / "runs").glob(f"*/{RUN_RECORD}"))):
        run_dir = path.parent.relative_to(sweep_dir).as_posix()
        attrs, problem = None, None
        try:
            attrs = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problem = f"cannot read run.json ({type(e).__name__})"  # written atomically: damaged, not half-written
        number = int(path.parent.name) if path.parent.name.isdigit() else i
        runs.append(_run_record(sweep_dir, sweep, number, attrs, None, {}, run_dir, problem))
    return runs


# ---- table and export ------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


def ranked(run: dict) -> bool:
    """A run with a result to rank: completed, with a finite value."""
    return run["state"] in COMPLETED and run["value"] is not None and math.isfinite(run["value"])


def rank(runs: list[dict], goal: str) -> list[dict]:
    """Completed runs best first, then running, then the rest, each in run order."""
    sign = -1 if goal == "maximize" else 1

    def key(run: dict) -> tuple:
        if ranked(run):
            return (0, sign * run["value"], run["number"])
        return (1 if run["state"] == "running" else 2, 0, run["number"])

    return sorted(runs, key=key)


def runs_table(sweep: Sweep, runs: list[dict]) -> list[list[str]]:
    """Header + one row per run, best first: the same rows for the console and the report."""
    names = list(sweep.parameters)
    rows = [["run", "state", f"{sweep.metric} ({sweep.goal[:3]})", "epochs", *names]]
    for run in rank(runs, sweep.goal):
        used = shown_params(sweep, run)
        state = run["state"] + (f": {run['reason']}" if run["reason"] and run["state"] not in COMPLETED else "")
        # a running run shows its best so far; a failed one has no result
        value = run["value"] if run["state"] != "running" else best_of(run["history"], sweep.goal)
        shown = "-" if value is None else fmt(value) + (f" ± {fmt(run['std'])}" if run.get("std") is not None else "")
        rows.append([run["name"], state, shown, str(len(run["history"])),
                     *(fmt(used[n]) if n in used else "-" for n in names)])
    return rows


def best_run(sweep: Sweep, runs: list[dict]) -> Optional[dict]:
    return next((run for run in rank(runs, sweep.goal) if ranked(run)), None)
