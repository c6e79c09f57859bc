"""A sweep checked against what it trains (its configs; for cli.py the CLI's options and the metrics
the model logs), once, before anything is written or launched."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Optional

from models.metric_names import DEFAULT_METRIC, logged_metric_names
from sweeps.errors import SweepConfigError
from sweeps.files.params import YACS_ALIASES, cli_parameters
from sweeps.files.schema import NULL, Parameter, check_brackets, read_config
from sweeps.files.sweep import Sweep, objective_weights

DEFAULT_OBJECTIVE_NAME = "val/objective"


def config_paths(sweep: Sweep, root: Path) -> list[str]:
    """The sweep's LightningCLI configs as a run started in `root` finds them; each must exist."""
    paths = []
    for given in sweep.config_files:
        path = given if Path(given).is_absolute() else str(Path(root) / given)
        if not Path(path).is_file():
            where = "" if Path(given).is_absolute() else f" (in {root})"
            raise SweepConfigError(f"LightningCLI config {given} does not exist{where} (--cfg)")
        paths.append(path)
    return paths


def _from_configs(config_files: list[str], group: str, key: str) -> Any:
    """`group.key` as the configs set it (the last one wins); None when none does."""
    value = None
    for path in config_files:
        value = (read_config(path).get(group) or {}).get(key, value)
    return value


def max_epochs_of(config_files: list[str], parameters: dict[str, Parameter]) -> Optional[int]:
    """trainer.max_epochs as a run would see it: the sweep's largest value, else the configs'."""
    param = parameters.get("trainer.max_epochs")
    numbers = [v for v in [*param.choices, param.spec.get("max")] if type(v) is int] if param else []
    return max(numbers) if numbers else _from_configs(config_files, "trainer", "max_epochs")


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


def check_configs(sweep: Sweep, root: Path) -> list[str]:
    """The configs exist and hyperband's brackets are reachable with them; returns their paths."""
    configs = config_paths(sweep, root)
    if sweep.early_terminate is not None:
        check_brackets(sweep.early_terminate, max_epochs_of(configs, sweep.parameters))
    return configs


def check_for_cli(sweep: Sweep, root: Path) -> list[str]:
    """Everything about `sweep` that depends on the configs and the CLI; returns the configs' paths."""
    configs = check_configs(sweep, root)
    if Path(sweep.program or "cli.py").name != "cli.py":
        return configs
    known = cli_parameters()
    unknown = [name for name in sweep.parameters if name not in known]
    if unknown:
        hints = []
        for name in unknown:
            alias = YACS_ALIASES.get(name) or YACS_ALIASES.get(name.upper())
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
            hints.append(f"{name}: the old tool's name, the CLI's is {alias}" if alias else
                         f"{name}: did you mean {', '.join(close)}?" if close else f"{name}: no similar option")
        raise SweepConfigError(f"the CLI has no option for sweep parameter(s) {unknown}; every run would fail "
                               f"({'; '.join(hints)}). Parameters are CLI paths such as model.lr, data.batch_size")
    for param in sweep.parameters.values():
        allowed = known[param.name]  # the values of a Literal option; None: any value of its type
        bad = [v for v in param.choices if (None if v == NULL else v) not in allowed] if allowed else []
        if bad:
            raise SweepConfigError(f"parameters.{param.name}: value(s) {bad} not allowed; "
                                   f"choose from {list(allowed)}")
    if sweep.metric is not None:
        classes = _from_configs(configs, "data", "classes")
        for objective in _objectives(sweep):
            check_metric(sweep.metric, objective, len(classes) if isinstance(classes, list) else None)
    return configs


def _objectives(sweep: Sweep) -> list[Optional[dict]]:
    """Every combined objective a run of the sweep may get: the command's `--sweep.objective=`,
    or the values of a swept `sweep.objective` parameter; [None] when there is none."""
    param = sweep.parameters.get("sweep.objective")
    if param is None:
        return [sweep.objective]
    found = [objective_weights(v, f"sweep.objective value {v!r}") if isinstance(v, str) else
             v if isinstance(v, dict) else None for v in param.choices]
    return found or [sweep.objective]
