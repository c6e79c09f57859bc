"""Build and check W&B sweep configurations whose program is the LightningCLI.

The result is a plain dict that W&B's schema accepts (it rejects any unknown key) and that
the offline runner reads unchanged. What W&B cannot express is resolved here:
  * conditional parameters (`parent`/`parent_values`) become `--sweep.when+=...` arguments
    in the command, applied by the CLI (see sweeps/conditions.py);
  * None values become "null", since the agent formats values with str();
  * a combined objective becomes `--sweep.objective=...`, logged under the metric's name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import yaml

from models.metrics import DEFAULT_METRIC, LOWER_IS_BETTER, logged_metric_names
from sweeps.contract.conditions import format_condition
from sweeps.errors import SweepConfigError
from sweeps.files.params import cli_parameters, resolve_name
from sweeps.files.schema import (
    GOALS,
    METHODS,
    check_early_terminate,
    check_parameter,
    infer_distribution,
    max_epochs_of,
    read_config,
)

DEFAULT_OBJECTIVE_NAME = "val/objective"

def task_classes(config_files: list[str]) -> Optional[int]:
    """The number of classes the configs name (data.classes), if they name them."""
    classes = None
    for path in config_files:
        data = read_config(path)
        classes = (data.get("data") or {}).get("classes", classes)
    return len(classes) if isinstance(classes, list) else None


def validation_metrics(num_classes: Optional[int]) -> list[str]:
    """What the model logs on validation for this task; for an unknown number of classes,
    what it logs for every task (a binary-only name then fails at the run's start instead)."""
    if num_classes is not None:
        return logged_metric_names(num_classes, "val")
    binary, multi = logged_metric_names(2, "val"), logged_metric_names(3, "val")
    return [*binary, *(m for m in multi if m not in binary)]


def check_metric(name: Optional[str], objective: Optional[dict[str, float]], num_classes: Optional[int] = None) -> str:
    """The sweep metric's name: a validation metric the model logs for this task, or, for a
    combined objective, a name of its own (logged once per epoch by the SweepMetric callback)."""
    valid = validation_metrics(num_classes)
    task = f" for {num_classes} classes" if num_classes else ""
    if objective:
        name = name or DEFAULT_OBJECTIVE_NAME
        if name in valid:
            raise SweepConfigError(
                f"metric {name!r} is a metric the model logs itself; a combined objective needs a name of its "
                f"own, e.g. {DEFAULT_OBJECTIVE_NAME}"
            )
        bad = [k for k in objective if k not in valid or k.endswith("/loss")]
        if bad:
            raise SweepConfigError(f"objective terms {bad} are not allowed{task}; choose from {valid[1:]}")
        return name
    name = name or DEFAULT_METRIC
    if name not in valid:
        raise SweepConfigError(
            f"metric {name!r} is not one the model logs{task}; choose from {valid} (sweeps optimize validation "
            "metrics; test metrics are reported, not optimized, so the test split stays unbiased)"
        )
    return name


def check_configs(configs: str | list[str]) -> list[str]:
    """The LightningCLI config file(s) a sweep trains; each must exist."""
    configs = [configs] if isinstance(configs, str) else list(configs)
    for path in configs:
        if not Path(path).is_file():
            raise SweepConfigError(f"LightningCLI config {path} does not exist (--cfg)")
    return configs


def create_custom_sweep_config(
    *,
    method: str = "bayes",
    name: Optional[str] = None,
    metric_name: Optional[str] = None,
    metric_goal: Optional[str] = None,
    parameters: Optional[dict[str, dict]] = None,
    early_terminate: Optional[dict] = None,
    config: str | list[str] = "configs/ra_hand.yaml",
    objective: Optional[dict[str, float]] = None,
    description: Optional[str] = None,
    run_cap: Optional[int] = None,
    project: Optional[str] = None,
    cv_folds: Optional[int] = None,
) -> dict:
    """A W&B sweep config that trains `config` with `python cli.py fit` (cross-validated over
    `cv_folds` patient-level folds per trial when given: the command carries `--cv.folds`)."""
    if cv_folds is not None and (not isinstance(cv_folds, int) or cv_folds < 2):
        raise SweepConfigError(f"--cv must be a number of folds >= 2, got {cv_folds!r}")
    if method not in METHODS:
        raise SweepConfigError(f"method {method!r} is not one of {list(METHODS)}")
    if not parameters:
        raise SweepConfigError("a sweep needs at least one parameter")
    configs = check_configs(config)
    metric_name = check_metric(metric_name, objective, task_classes(configs))
    lower = metric_name.split("/", 1)[-1] in LOWER_IS_BETTER
    metric_goal = metric_goal or ("minimize" if lower else "maximize")
    if metric_goal not in GOALS:
        raise SweepConfigError(f"metric goal {metric_goal!r} is not one of {list(GOALS)}")
    known = cli_parameters()
    resolved: dict[str, dict] = {}
    for raw_name, spec in parameters.items():
        path = resolve_name(raw_name, known)
        resolved[path] = dict(spec) if isinstance(spec, dict) else spec
    out_params: dict[str, dict] = {}
    conditions: list[str] = []
    for path, spec in resolved.items():
        out_params[path] = check_parameter(path, spec, known[path])
        if method == "grid" and infer_distribution(path, spec) not in ("constant", "categorical"):
            raise SweepConfigError(f"parameters.{path}: grid search needs `values` or `value`")
        if "parent" in spec or "parent_values" in spec:
            parent = spec.get("parent")
            if parent is None or "parent_values" not in spec:
                raise SweepConfigError(f"parameters.{path}: `parent` and `parent_values` go together")
            parent = resolve_name(parent, known) if parent not in resolved else parent
            if parent not in resolved:
                raise SweepConfigError(
                    f"parameters.{path}.parent {spec['parent']!r} is not a parameter of this sweep "
                    f"(parameters: {sorted(resolved)})"
                )
            values = spec["parent_values"] if isinstance(spec["parent_values"], list) else [spec["parent_values"]]
            parent_values = resolved[parent].get("values", [resolved[parent].get("value")])
            stray = [v for v in values if v not in parent_values]
            if stray:
                raise SweepConfigError(
                    f"parameters.{path}.parent_values {stray} are not values of {parent} ({parent_values})"
                )
            conditions.append(format_condition(path, parent, values))
    et = None
    if early_terminate:
        et = check_early_terminate(early_terminate, max_epochs_of(configs, out_params))
    command = ["${env}", "${interpreter}", "${program}", "fit"]
    for path in configs:
        command += ["--config", path]
    command.append(f"--sweep.metric={metric_name}")
    if objective:
        command.append(f"--sweep.objective={json.dumps(objective, sort_keys=True)}")
    if cv_folds:
        command.append(f"--cv.folds={cv_folds}")  # one trial = k folds; the metric is their mean per epoch
    command += conditions
    command.append("${args}")
    sweep: dict[str, Any] = {"program": "cli.py"}
    if name:
        sweep["name"] = name
    if description:
        sweep["description"] = description
    if project:
        sweep["project"] = project
    sweep["method"] = method
    sweep["metric"] = {"name": metric_name, "goal": metric_goal}
    if et:
        sweep["early_terminate"] = et
    if run_cap:
        sweep["run_cap"] = int(run_cap)
    sweep["parameters"] = dict(sorted(out_params.items()))
    sweep["command"] = command
    return sweep


def merge_custom_params(base: dict, custom: Optional[dict | str]) -> dict:
    """Preset parameters updated with --custom_params (a dict, or JSON text)."""
    if custom is None:
        return copy.deepcopy(base)
    if isinstance(custom, str):
        try:
            custom = json.loads(custom)
        except json.JSONDecodeError as e:
            raise SweepConfigError(f"--custom_params is not valid JSON ({e.msg} at column {e.colno}): {custom}") from e
    if not isinstance(custom, dict):
        raise SweepConfigError(f"--custom_params must be a JSON object of parameter specs, got {custom!r}")
    merged = copy.deepcopy(base)
    for key, spec in custom.items():
        if not isinstance(spec, dict):
            spec = {"value": spec}  # {"model.lr": 0.001} fixes a value
        merged[key] = spec
    return merged


def replace_config(sweep: dict, configs: str | list[str]) -> dict:
    """The same sweep training other LightningCLI config(s): `--config X` items replaced."""
    configs = check_configs(configs)
    command, out, inserted = list(sweep.get("command") or []), [], False
    i = 0
    while i < len(command):
        if command[i] == "--config" and i + 1 < len(command):
            if not inserted:
                for path in configs:
                    out += ["--config", path]
                inserted = True
            i += 2
            continue
        out.append(command[i])
        i += 1
    if not inserted:
        raise SweepConfigError("the sweep's command has no `--config FILE` to replace")
    if sweep.get("early_terminate"):  # brackets must still be reachable with the new config
        check_early_terminate(sweep["early_terminate"], max_epochs_of(configs, sweep.get("parameters") or {}))
    return dict(sweep, command=out)


def render_yaml(sweep: dict, header: str = "") -> str:
    body = yaml.safe_dump(sweep, sort_keys=False, default_flow_style=False, width=120)
    return header + body


