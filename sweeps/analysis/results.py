"""The runs of a sweep, offline or on W&B, as one list of records; ranking, the table of runs,
and the best run's parameters as a LightningCLI config (what `best` and `report` show).

An offline sweep directory holds sweep.yaml, the Optuna storage optuna.db (one trial per run,
the run's facts in user_attrs) and runs/NNNN/ (run.json, sweep_history.jsonl, config.yaml).
A W&B sweep is read with wandb.Api(); bayes there ranks runs by the best value in history,
and so do we.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import yaml

from models.metrics import DEFAULT_METRIC
from sweeps.contract.conditions import WHEN_PREFIX, format_value, parse_condition
from sweeps.contract.history import HISTORY_FILE, best_of, read_history
from sweeps.errors import UsageError
from sweeps.files.params import YACS_ALIASES

COMPLETED = ("finished", "stopped")  # Optuna state COMPLETE: value = best of history
_WANDB_PATH = re.compile(r"^[\w.-]+/[\w.-]+/[\w-]+$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def from_cli(value: Any) -> Any:
    """A value as the CLI reads it from the agent's `--name=value` (str() of the sampled value)."""
    if not isinstance(value, str):
        return value
    if value in ("null", "None"):  # "None" is what str(None) gives; both mean null
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str) and _NUMBER.match(parsed):
        return float(parsed)  # YAML 1.1 reads 1e-5 as a string; jsonargparse reads a float
    return value if parsed is None else parsed


def goal_of(sweep: dict) -> tuple[str, str]:
    metric = sweep.get("metric") or {}
    return str(metric.get("name") or DEFAULT_METRIC), str(metric.get("goal") or "maximize")


def conditions(sweep: dict) -> list[tuple[str, str, list[str]]]:
    """The sweep's `--sweep.when+=CHILD:PARENT=V1|V2` command items, parsed."""
    found = []
    for item in sweep.get("command") or []:
        item = str(item)
        if not item.startswith(WHEN_PREFIX):
            continue
        spec = item[len(WHEN_PREFIX):].removeprefix("+").removeprefix("=")
        specs = yaml.safe_load(spec) if spec.startswith("[") else [spec]
        found += [parse_condition(str(s)) for s in specs]
    return found


def _lookup(config: Optional[dict], path: str) -> tuple[bool, Any]:
    if not config:
        return False, None
    if path in config:  # flat keys (W&B run.config)
        return True, config[path]
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def applied_params(sweep: dict, params: dict, run_config: Optional[dict] = None) -> dict:
    """The swept values the run actually used: children whose condition failed are dropped.
    A parent that was not swept is looked up in the run's full config, when there is one."""
    values = {YACS_ALIASES.get(k, k): from_cli(v) for k, v in params.items()}
    for child, parent, allowed in conditions(sweep):
        if child not in values:
            continue
        known, parent_value = (True, values[parent]) if parent in values else _lookup(run_config, parent)
        if known and format_value(parent_value) not in allowed:
            del values[child]
    return values


def command_options(sweep: dict) -> dict:
    """Options fixed in the sweep's command (`--cv.folds=5`, DDP settings, ...), as a run saw them."""
    found = {}
    for item in sweep.get("command") or []:
        item = str(item)
        if item.startswith("--") and "=" in item and not item.startswith(("--sweep.", "--config")):
            key, value = item[2:].split("=", 1)
            found[key] = from_cli(value)
    return found


def best_config(sweep: dict, params: dict, run_config: Optional[dict] = None) -> dict:
    """The nested LightningCLI config of a run's swept values, without sweep.*/run.* settings
    and without conditional children that did not apply."""
    nested: dict = {}
    for path, value in {**command_options(sweep), **applied_params(sweep, params, run_config)}.items():
        if path.split(".")[0] in ("sweep", "run", "config"):
            continue
        *parents, leaf = path.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    order = {"seed_everything": 0, "trainer": 1, "model": 2, "data": 3}
    return dict(sorted(nested.items(), key=lambda kv: order.get(kv[0], 9)))


# ---- offline sweep directories --------------------------------------------------------------


def _run_record(sweep_dir: Path, number: int, attrs: dict, value: Optional[float], fallback_params: dict,
                metric: str, goal: str) -> dict:
    run_dir = attrs.get("run_dir") or f"runs/{number:04d}"
    history = [float(v) for v in attrs.get("history") or [] if isinstance(v, (int, float))]
    if not history:  # a run still going: its history file is the live view
        history = [v for v in read_history(sweep_dir / run_dir / HISTORY_FILE, metric) if v is not None]
    state = attrs.get("state") or ("finished" if value is not None else "running")
    if value is None and state in COMPLETED:
        value = best_of(history, goal)
    return {
        "number": number,
        "name": Path(run_dir).name,
        "state": state,
        "value": value,
        "history": history,
        "params": dict(attrs.get("params") or fallback_params),
        "run_dir": run_dir,
        "reason": attrs.get("reason"),
        "wall_s": attrs.get("wall_s"),
        "std": fold_spread(sweep_dir / run_dir / HISTORY_FILE, metric, value),
    }


def fold_spread(history_file: Path, metric: str, value: Optional[float]) -> Optional[float]:
    """A cross-validated run's standard deviation across folds at its best epoch (the row whose
    fold mean is the run's value), from `<metric>_std` in its history; None for other runs."""
    if value is None:
        return None
    try:
        lines = Path(history_file).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row.get(f"{metric}_std"), (int, float)) and row.get(metric) == value:
            return float(row[f"{metric}_std"])
    return None


def load_offline_runs(sweep_dir: str | Path) -> tuple[dict, list[dict]]:
    """(sweep config, runs in trial order) from the Optuna storage, or from the run.json files
    when the sweep used another storage (--storage URL) or its optuna.db lost its trials."""
    sweep_dir = Path(sweep_dir)
    sweep_file = sweep_dir / "sweep.yaml"
    if not sweep_dir.is_dir():
        raise UsageError(f"{sweep_dir} is not a directory; give an offline sweep directory or ENTITY/PROJECT/SWEEP_ID")
    try:
        sweep = yaml.safe_load(sweep_file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{sweep_dir} is not a sweep directory: cannot read {sweep_file} ({e})") from e
    if not isinstance(sweep, dict) or "parameters" not in sweep:
        raise UsageError(f"{sweep_file} is not a W&B sweep config (no `parameters`)")
    metric, goal = goal_of(sweep)
    db = sweep_dir / "optuna.db"
    runs = []
    if db.is_file() and db.stat().st_size:  # 0 bytes (truncated): opening it would write tables into it
        import optuna

        storage = f"sqlite:///{db.resolve()}"
        names = _study_names(db, storage)
        name = sweep.get("name")
        if name not in names:
            if len(names) != 1:
                raise UsageError(f"{db} holds studies {names}, none named {name!r} as in {sweep_file}")
            name = names[0]
        study = optuna.load_study(study_name=name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            attrs = trial.user_attrs
            if trial.state == optuna.trial.TrialState.FAIL and attrs.get("state") in (None, "running"):
                attrs = dict(attrs, state="interrupted")  # failed by a heartbeat check: its runner died
            runs.append(_run_record(sweep_dir, trial.number, attrs, trial.value, trial.params, metric, goal))
    else:
        runs = _recorded_runs(sweep_dir, metric, goal)
        if not runs:
            raise UsageError(f"{sweep_dir} is not a sweep directory: no optuna.db and no runs/*/run.json")
    if not runs:  # an optuna.db whose trials were lost (emptied, or a new study in their place)
        runs = _recorded_runs(sweep_dir, metric, goal)
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


def _recorded_runs(sweep_dir: Path, metric: str, goal: str) -> list[dict]:
    """The runs from their runs/*/run.json records (what the runner writes next to the storage)."""
    runs = []
    for i, path in enumerate(sorted((sweep_dir / "runs").glob("*/run.json"))):
        try:
            attrs = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            attrs = {"state": "running"}
        attrs.setdefault("run_dir", path.parent.relative_to(sweep_dir).as_posix())
        number = int(path.parent.name) if path.parent.name.isdigit() else i
        runs.append(_run_record(sweep_dir, number, attrs, None, {}, metric, goal))
    return runs


def run_config(sweep_dir: Path, run: dict) -> Optional[dict]:
    try:
        return yaml.safe_load((sweep_dir / run["run_dir"] / "config.yaml").read_text())
    except (OSError, yaml.YAMLError, TypeError):
        return None


# ---- W&B -------------------------------------------------------------------------------------


def load_wandb_runs(path: str) -> tuple[dict, list[dict]]:
    try:
        import wandb

        api = wandb.Api(timeout=20)
        remote = api.sweep(path)
        sweep = dict(remote.config)
        metric, goal = goal_of(sweep)
        runs = []
        for i, run in enumerate(remote.runs):
            history = [row[metric] for row in run.scan_history(keys=[metric])
                       if isinstance(row.get(metric), (int, float))]
            value = best_of(history, goal)
            if value is None and isinstance(run.summary.get(metric), (int, float)):
                value = float(run.summary[metric])
            config = {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v
                      for k, v in dict(run.config).items()}
            spread = None
            if isinstance(run.summary.get(f"{metric}_std"), (int, float)):  # a cross-validated run
                stds = {row[metric]: row[f"{metric}_std"] for row in run.scan_history(keys=[metric, f"{metric}_std"])}
                spread = stds.get(value)
            # W&B has no "stopped": a run the agent stops exits 0 (finished); killed = stopped by hand
            state = {"crashed": "failed", "killed": "stopped"}.get(run.state, run.state)
            runs.append({
                "number": i, "name": run.name or run.id, "state": state,
                "value": value if state in COMPLETED else None, "history": history,
                "params": {k: config[k] for k in sweep.get("parameters") or {} if k in config},
                "run_dir": None, "reason": None, "wall_s": run.summary.get("_runtime"),
                "config": config, "std": spread,
            })
    except UsageError:
        raise
    except Exception as e:  # no key, no network, no such sweep: wandb raises many kinds
        raise UsageError(
            f"cannot read W&B sweep {path}: {str(e).rstrip('.')}. On a machine without W&B access use the offline "
            f"sweep directory instead: python -m sweeps best sweep_runs/<sweep name>"
        ) from e
    return sweep, runs


# ---- table and export ------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "null" if value is None else str(value)


def rank(runs: list[dict], goal: str) -> list[dict]:
    """Completed runs best first, then running, then the rest, each in run order."""
    sign = -1 if goal == "maximize" else 1

    def key(run: dict) -> tuple:
        if run["state"] in COMPLETED and run["value"] is not None:
            return (0, sign * run["value"], run["number"])
        return (1 if run["state"] == "running" else 2, 0, run["number"])

    return sorted(runs, key=key)


def runs_table(sweep: dict, runs: list[dict]) -> list[list[str]]:
    """Header + one row per run, best first: the same rows for the console and the report."""
    metric, goal = goal_of(sweep)
    names = list(sweep.get("parameters") or {})
    rows = [["run", "state", f"{metric} ({goal[:3]})", "epochs", *names]]
    for run in rank(runs, goal):
        applied = applied_params(sweep, run["params"], run.get("config"))
        state = run["state"] + (f": {run['reason']}" if run["reason"] and run["state"] not in COMPLETED else "")
        # a running run shows its best so far; a failed one has no result
        value = run["value"] if run["state"] != "running" else best_of(run["history"], goal)
        shown = "-" if value is None else fmt(value) + (f" ± {fmt(run['std'])}" if run.get("std") is not None else "")
        rows.append([run["name"], state, shown, str(len(run["history"])),
                     *(fmt(applied[n]) if n in applied else "-" for n in names)])
    return rows


def best_run(sweep: dict, runs: list[dict]) -> Optional[dict]:
    ranked = rank(runs, goal_of(sweep)[1])
    return ranked[0] if ranked and ranked[0]["state"] in COMPLETED and ranked[0]["value"] is not None else None
