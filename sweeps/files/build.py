"""Build W&B sweep files whose program is the LightningCLI, from a preset or the old tool's
flags; what W&B cannot express (conditions, a combined objective) goes into the command (README,
"How the sweep files work with LightningCLI")."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import yaml

from models.metric_names import DEFAULT_METRIC, LOWER_IS_BETTER
from sweeps.contract.conditions import format_condition, format_value
from sweeps.errors import SweepConfigError
from sweeps.files.check import DEFAULT_OBJECTIVE_NAME, check_configs, check_for_cli
from sweeps.files.params import cli_parameters, resolve_name
from sweeps.files.schema import CONDITION_KEYS, null_safe
from sweeps.files.sweep import Sweep


def _conditions(specs: dict[str, Any]) -> list[str]:
    """The `--sweep.when+=CHILD:PARENT=V1|V2` items of the presets' `parent`/`parent_values`."""
    conditions = []
    for path, spec in specs.items():
        if not isinstance(spec, dict) or not CONDITION_KEYS & set(spec):
            continue
        parent = spec.get("parent")
        if parent is None or "parent_values" not in spec:
            raise SweepConfigError(f"parameters.{path}: `parent` and `parent_values` go together")
        if parent not in specs:
            parent = resolve_name(parent)
        if parent not in specs:
            raise SweepConfigError(f"parameters.{path}.parent {spec['parent']!r} is not a parameter of this sweep "
                                   f"(parameters: {sorted(specs)})")
        values = spec["parent_values"] if isinstance(spec["parent_values"], list) else [spec["parent_values"]]
        conditions.append(format_condition(path, parent, values))
    return conditions


def _file_spec(spec: Any) -> Any:
    """A preset's spec as a sweep file says it: no condition keys, None written `null` (schema.NULL)."""
    if not isinstance(spec, dict):
        return spec
    out = {k: v for k, v in spec.items() if k not in CONDITION_KEYS}
    for key in ("value", "values"):
        if key in out:
            out[key] = null_safe(out[key])
    return out


def _check_parent_values(sweep: Sweep) -> None:
    """A condition on a value its parent never takes would never apply."""
    for condition in sweep.conditions:
        taken = [format_value(v) for v in sweep.parameters[condition.parent].choices]
        stray = [v for v in condition.values if v not in taken]
        if stray:
            raise SweepConfigError(f"parameters.{condition.child}.parent_values {stray} are not values of "
                                   f"{condition.parent} ({taken})")


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
    if not parameters:
        raise SweepConfigError("a sweep needs at least one parameter")
    known = cli_parameters()
    specs = {resolve_name(raw, known): dict(spec) if isinstance(spec, dict) else spec
             for raw, spec in parameters.items()}
    metric_name = metric_name or (DEFAULT_OBJECTIVE_NAME if objective else DEFAULT_METRIC)
    lower = metric_name.split("/", 1)[-1] in LOWER_IS_BETTER
    configs = [config] if isinstance(config, str) else list(config)
    command = ["${env}", "${interpreter}", "${program}", "fit"]
    for path in configs:
        command += ["--config", path]
    command.append(f"--sweep.metric={metric_name}")
    if objective:
        command.append(f"--sweep.objective={json.dumps(objective, sort_keys=True)}")
    if cv_folds:
        command.append(f"--cv.folds={cv_folds}")  # one trial = k folds; the metric is their mean per epoch
    command += _conditions(specs)
    command.append("${args}")
    data: dict[str, Any] = {"program": "cli.py", "name": name, "description": description, "project": project,
                            "method": method,
                            "metric": {"name": metric_name, "goal": metric_goal or ("minimize" if lower else "maximize")},
                            "early_terminate": early_terminate or None, "run_cap": int(run_cap) if run_cap else None,
                            "parameters": dict(sorted((path, _file_spec(spec)) for path, spec in specs.items())),
                            "command": command}
    sweep = Sweep.from_dict({k: v for k, v in data.items() if v is not None})
    check_for_cli(sweep, Path.cwd())
    _check_parent_values(sweep)
    return sweep.to_dict()


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
    """The same sweep training other LightningCLI config(s), its brackets checked against them."""
    configs = [configs] if isinstance(configs, str) else list(configs)
    swapped = Sweep.from_dict(sweep).with_configs(configs)
    check_configs(swapped, Path.cwd())
    return swapped.to_dict()


def render_yaml(sweep: dict, header: str = "") -> str:
    body = yaml.safe_dump(sweep, sort_keys=False, default_flow_style=False, width=120)
    return header + body
