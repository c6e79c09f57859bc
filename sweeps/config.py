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
import math
from pathlib import Path
from typing import Any, Optional

import yaml

from sweeps.conditions import format_condition
from sweeps.params import ParameterError, choices, cli_parameters, resolve_name

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
# W&B's distributions -> (required keys, optional keys); from W&B's sweep-config schema.
DISTRIBUTIONS: dict[str, tuple[set, set]] = {
    "constant": ({"value"}, set()),
    "categorical": ({"values"}, set()),
    "categorical_w_probabilities": ({"values", "probabilities"}, set()),
    "int_uniform": ({"min", "max"}, set()),
    "uniform": ({"min", "max"}, set()),
    "q_uniform": ({"min", "max"}, {"q"}),
    "log_uniform_values": ({"min", "max"}, set()),
    "inv_log_uniform_values": ({"min", "max"}, set()),
    "q_log_uniform_values": ({"min", "max"}, {"q"}),
    "normal": (set(), {"mu", "sigma"}),
    "log_normal": (set(), {"mu", "sigma"}),
    "q_normal": (set(), {"mu", "sigma", "q"}),
    "q_log_normal": (set(), {"mu", "sigma", "q"}),
    "beta": (set(), {"a", "b"}),
    "q_beta": (set(), {"a", "b", "q"}),
}
CONDITION_KEYS = {"parent", "parent_values"}  # ours; never written to a sweep file
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
METRIC_STAGE_PREFIX = "val/"
DEFAULT_OBJECTIVE_NAME = "val/objective"


class SweepConfigError(ValueError):
    """A sweep definition W&B or the CLI would reject; the message names the key."""


def infer_distribution(name: str, spec: dict) -> str:
    """W&B's defaults: value -> constant, values -> categorical, int min/max -> int_uniform."""
    if "distribution" in spec:
        dist = spec["distribution"]
        if dist not in DISTRIBUTIONS:
            raise SweepConfigError(
                f"parameters.{name}.distribution {dist!r} is unknown; allowed: {', '.join(DISTRIBUTIONS)}"
            )
        return dist
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        both_int = all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    raise SweepConfigError(f"parameters.{name} needs `value`, `values`, `min`/`max` or a `distribution`")


def _null_safe(value: Any) -> Any:
    """The agent writes values with str(): None would become `None`, which the CLI rejects."""
    if value is None:
        return "null"
    if isinstance(value, list):
        return [_null_safe(v) for v in value]
    return value


def check_parameter(name: str, spec: dict, annotation: Any) -> dict:
    """Validate one parameter spec; returns it W&B-ready (without condition keys)."""
    if not isinstance(spec, dict):
        raise SweepConfigError(f"parameters.{name} must be a mapping such as {{values: [...]}}, got {spec!r}")
    dist = infer_distribution(name, spec)
    required, optional = DISTRIBUTIONS[dist]
    allowed = required | optional | {"distribution"} | CONDITION_KEYS
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SweepConfigError(
            f"parameters.{name}: key(s) {unknown} are not allowed for distribution {dist}; allowed: {sorted(allowed)}"
        )
    missing = sorted(required - set(spec))
    if missing:
        raise SweepConfigError(f"parameters.{name}: distribution {dist} needs {missing}")
    if "min" in spec and "max" in spec:
        lo, hi = spec["min"], spec["max"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise SweepConfigError(f"parameters.{name}: min and max must be numbers, got {lo!r}, {hi!r}")
        if lo >= hi:
            raise SweepConfigError(f"parameters.{name}: min ({lo}) must be less than max ({hi})")
        if "log" in dist and lo <= 0:
            raise SweepConfigError(f"parameters.{name}: {dist} needs min > 0, got {lo}")
        if dist == "int_uniform" and not all(isinstance(v, int) for v in (lo, hi)):
            raise SweepConfigError(f"parameters.{name}: int_uniform needs integer min and max, got {lo}, {hi}")
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"parameters.{name}.values must be a non-empty list, got {values!r}")
        if dist == "categorical_w_probabilities":
            probs = spec["probabilities"]
            if len(probs) != len(values) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
                raise SweepConfigError(f"parameters.{name}.probabilities must match values and sum to 1")
    allowed_values = choices(annotation)
    if allowed_values:
        given = spec.get("values", [spec["value"]] if "value" in spec else [])
        bad = [v for v in given if (None if v == "null" else v) not in allowed_values]
        if bad:
            raise SweepConfigError(f"parameters.{name}: value(s) {bad} not allowed; choose from {list(allowed_values)}")
    out = {k: v for k, v in spec.items() if k not in CONDITION_KEYS}
    for key in ("value", "values"):
        if key in out:
            out[key] = _null_safe(out[key])
    return out


def hyperband_bands(early_terminate: dict) -> list[int]:
    """The iterations at which W&B's hyperband compares runs (sweeps/hyperband_stopping.py)."""
    eta = early_terminate.get("eta", 3)
    if "min_iter" in early_terminate:
        return [int(early_terminate["min_iter"] * eta**k) for k in range(100)]
    band, bands = float(early_terminate["max_iter"]), []
    for _ in range(int(early_terminate["s"])):
        band /= eta
        if band < 1:
            break
        bands.append(int(band))
    return sorted(bands)


def check_early_terminate(early_terminate: dict, max_epochs: Optional[int]) -> dict:
    et = dict(early_terminate)
    et.setdefault("type", "hyperband")
    unknown = sorted(set(et) - HYPERBAND_KEYS)
    if et["type"] != "hyperband" or unknown:
        raise SweepConfigError(
            f"early_terminate: only type hyperband with keys {sorted(HYPERBAND_KEYS)} is supported; got {et}"
        )
    if "min_iter" not in et and not ("max_iter" in et and "s" in et):
        raise SweepConfigError("early_terminate (hyperband) needs min_iter, or max_iter and s")
    if et.get("eta", 3) <= 1:
        raise SweepConfigError(f"early_terminate.eta must be > 1, got {et['eta']}")
    for key in ("min_iter", "max_iter"):
        if key in et and (not isinstance(et[key], int) or et[key] < 1):
            raise SweepConfigError(f"early_terminate.{key} must be a whole number of epochs >= 1, got {et[key]}")
    if max_epochs is not None:
        reachable = [b for b in hyperband_bands(et) if b <= max_epochs]
        too_far = et.get("min_iter", 0) > max_epochs or et.get("max_iter", 0) > max_epochs
        if not reachable or too_far:
            raise SweepConfigError(
                f"early_terminate {et}: brackets at epochs {hyperband_bands(et)[:5]} but trainer.max_epochs is "
                f"{max_epochs}, so a bracket can never be reached; lower min_iter/max_iter (they count epochs)"
            )
    return et


def max_epochs_of(config_files: list[str], parameters: dict) -> Optional[int]:
    """trainer.max_epochs as a run would see it: the sweep's largest value, else the configs'."""
    spec = parameters.get("trainer.max_epochs")
    if spec:
        candidates = spec.get("values") or [spec.get("value")] or []
        candidates += [spec["max"]] if "max" in spec else []
        numbers = [c for c in candidates if isinstance(c, int)]
        if numbers:
            return max(numbers)
    value = None
    for path in config_files:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise SweepConfigError(f"Cannot read LightningCLI config {path}: {e}") from e
        value = (data.get("trainer") or {}).get("max_epochs", value)
    return value


def validation_metrics() -> list[str]:
    from models.metrics import METRIC_NAMES

    return [f"{METRIC_STAGE_PREFIX}{name}" for name in METRIC_NAMES]


def check_metric(name: Optional[str], objective: Optional[dict[str, float]]) -> str:
    """The sweep metric's name: a validation metric the model logs, or, for a combined
    objective, a name of its own (logged once per epoch by the SweepMetric callback)."""
    valid = validation_metrics()
    if objective:
        name = name or DEFAULT_OBJECTIVE_NAME
        if name in valid:
            raise SweepConfigError(
                f"metric {name!r} is a metric the model logs itself; a combined objective needs a name of its "
                f"own, e.g. {DEFAULT_OBJECTIVE_NAME}"
            )
        bad = [k for k in objective if k not in valid or k.endswith("/loss")]
        if bad:
            raise SweepConfigError(f"objective terms {bad} are not allowed; choose from {valid[1:]}")
        return name
    name = name or "val/auroc"
    if name not in valid:
        raise SweepConfigError(
            f"metric {name!r} is not one the model logs; choose from {valid} (sweeps optimize validation "
            "metrics; test metrics are reported, not optimized, so the test split stays unbiased)"
        )
    return name


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
) -> dict:
    """A W&B sweep config that trains `config` with `python cli.py fit`."""
    if method not in METHODS:
        raise SweepConfigError(f"method {method!r} is not one of {list(METHODS)}")
    if not parameters:
        raise SweepConfigError("a sweep needs at least one parameter")
    configs = [config] if isinstance(config, str) else list(config)
    for path in configs:
        if not Path(path).is_file():
            raise SweepConfigError(f"LightningCLI config {path} does not exist (--cfg)")
    metric_name = check_metric(metric_name, objective)
    metric_goal = metric_goal or ("minimize" if metric_name == "val/loss" else "maximize")
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
    configs = [configs] if isinstance(configs, str) else list(configs)
    for path in configs:
        if not Path(path).is_file():
            raise SweepConfigError(f"LightningCLI config {path} does not exist (--cfg)")
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


__all__ = [
    "ParameterError",
    "SweepConfigError",
    "create_custom_sweep_config",
    "hyperband_bands",
    "merge_custom_params",
    "render_yaml",
]
