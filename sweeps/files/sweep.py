"""A sweep as one typed object: a W&B sweep file parsed and checked once (`Sweep.from_dict`,
`load_sweep`), then read by `generate`, `run`, `best` and `report`. What its command says
(the LightningCLI configs, the conditional parameters, the options it fixes) is read here and
nowhere else. Checks against the CLI and the configs it trains are in sweeps/files/check.py."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

import yaml

from sweeps.contract.conditions import WHEN_PREFIX, format_value, parse_condition
from sweeps.errors import SweepConfigError
from sweeps.files.schema import GOALS, METHODS, Parameter, check_early_terminate, parse_parameter

# W&B's schema: additionalProperties is false at the top level (from W&B's sweeps package)
TOP_LEVEL = ("program", "name", "description", "project", "entity", "method", "metric", "metrics", "early_terminate",
             "run_cap", "parameters", "command", "job", "image_uri", "apiVersion", "kind", "controller", "scheduler")
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")  # W&B's, when a file has none
OWN_OPTIONS = ("sweep.", "config")  # command options that say how to sweep, not what a run trains


@dataclass(frozen=True)
class Condition:
    """`--sweep.when+=CHILD:PARENT=V1|V2`: CHILD's swept value applies only when PARENT has one of the values."""

    child: str
    parent: str
    values: tuple[str, ...]

    def holds(self, parent_value: Any) -> bool:
        return format_value(parent_value) in self.values


@dataclass(frozen=True)
class Sweep:
    method: str
    metric: Optional[str]  # None only where W&B allows it (grid and random); the offline runner needs one
    goal: str
    parameters: dict[str, Parameter]
    command: tuple[str, ...] = DEFAULT_COMMAND
    program: Optional[str] = None
    name: Optional[str] = None
    early_terminate: Optional[dict] = None
    run_cap: Optional[int] = None
    other: dict = field(default_factory=dict)  # description, project, ...: kept as written

    @classmethod
    def from_dict(cls, data: Any) -> Sweep:
        """Parse and check a sweep as W&B's controller would, before anything is written or run."""
        if not isinstance(data, dict):
            raise SweepConfigError(f"a sweep is a mapping of {', '.join(TOP_LEVEL[:12])}, ...; got {data!r}")
        unknown = [k for k in data if k not in TOP_LEVEL]
        if unknown:
            raise SweepConfigError(f"unknown top-level key(s) {unknown}; W&B allows {', '.join(TOP_LEVEL)}")
        method = data.get("method")
        if method not in METHODS:
            raise SweepConfigError(f"method {method!r} is not one of {list(METHODS)}")
        metric, goal = _metric(data.get("metric"), method)
        parameters = data.get("parameters")
        if not isinstance(parameters, dict) or not parameters:
            raise SweepConfigError("the sweep has no parameters (a mapping of CLI paths to specs)")
        params = {str(name): parse_parameter(str(name), spec, method) for name, spec in parameters.items()}
        command = data.get("command") or list(DEFAULT_COMMAND)
        if not isinstance(command, list):
            raise SweepConfigError(f"command must be a list of arguments, got {command!r}")
        et = data.get("early_terminate")
        run_cap = data.get("run_cap")
        if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
            raise SweepConfigError(f"run_cap must be a whole number >= 1, got {run_cap!r}")
        sweep = cls(method=method, metric=metric, goal=goal, parameters=params, command=tuple(str(c) for c in command),
                    program=None if data.get("program") is None else str(data["program"]),
                    name=None if data.get("name") is None else str(data["name"]),
                    early_terminate=None if et is None else check_early_terminate(et), run_cap=run_cap,
                    other={k: v for k, v in data.items() if k not in _FIELDS})
        sweep.conditions  # noqa: B018 (a malformed --sweep.when fails here, not in every run)
        return sweep

    def to_dict(self) -> dict:
        """The W&B sweep file, keys in the order the generator writes them."""
        head = {"program": self.program, "name": self.name,
                **{k: v for k, v in self.other.items() if k in ("description", "project", "entity")},
                "method": self.method,
                "metric": None if self.metric is None else {"name": self.metric, "goal": self.goal},
                "early_terminate": None if self.early_terminate is None else dict(self.early_terminate),
                "run_cap": self.run_cap}
        out = {k: v for k, v in head.items() if v is not None or k in self.other}  # other: kept as written
        return {**out, **{k: v for k, v in self.other.items() if k not in out},
                "parameters": {name: dict(p.spec) for name, p in self.parameters.items()},
                "command": list(self.command)}

    def same_runs(self, other: Sweep) -> bool:
        """Whether `other` runs exactly this sweep (a restart may rename or describe it)."""
        keys = ("method", "metric", "goal", "parameters", "early_terminate", "command")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    @cached_property
    def _config_items(self) -> dict[int, str]:
        """Index of each `--config X` or `--config=X` item of the command -> X."""
        found, command = {}, self.command
        for i, item in enumerate(command):
            if item == "--config" and i + 1 < len(command):
                found[i] = command[i + 1]
            elif item.startswith("--config="):
                found[i] = item.split("=", 1)[1]
        return found

    @property
    def config_files(self) -> list[str]:
        """The LightningCLI configs the command trains, in order."""
        return list(self._config_items.values())

    def with_configs(self, configs: list[str]) -> Sweep:
        """The same sweep training other LightningCLI config(s): the `--config` items replaced."""
        items = self._config_items
        if not items:
            raise SweepConfigError("the sweep's command has no `--config FILE` to replace")
        first, dropped = min(items), {*items, *(i + 1 for i in items if self.command[i] == "--config")}
        new = [part for path in configs for part in ("--config", path)]
        rest = [item for i, item in enumerate(self.command) if i > first and i not in dropped]
        return dataclasses.replace(self, command=(*self.command[:first], *new, *rest))

    @cached_property
    def conditions(self) -> list[Condition]:
        """The command's `--sweep.when+=CHILD:PARENT=V1|V2` items."""
        found = []
        for item in self.command:
            if not item.startswith(WHEN_PREFIX):
                continue
            spec = item[len(WHEN_PREFIX):].removeprefix("+").removeprefix("=")
            try:
                specs = yaml.safe_load(spec) if spec.startswith("[") else [spec]
                for child, parent, values in (parse_condition(str(s)) for s in specs):
                    found.append(Condition(child, parent, tuple(values)))
            except (ValueError, TypeError, yaml.YAMLError) as e:
                raise SweepConfigError(f"command item {item!r}: {e}") from None
        return found

    @cached_property
    def fixed_options(self) -> dict[str, str]:
        """Options the command fixes for every run (`--cv.folds=5`, DDP settings), as written there."""
        found = {}
        for item in self.command:
            if item.startswith("--") and "=" in item and not item[2:].startswith(OWN_OPTIONS):
                key, value = item[2:].split("=", 1)
                found[key] = value
        return found

    @cached_property
    def objective(self) -> Optional[dict]:
        """The weights of a combined objective (`--sweep.objective=...`), if the command has one."""
        item = next((c for c in self.command if c.startswith("--sweep.objective=")), None)
        return None if item is None else objective_weights(item.split("=", 1)[1], f"command item {item!r}")


def objective_weights(text: str, what: str) -> Optional[dict]:
    """A combined objective's weights from its JSON text (None when they are not a mapping)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SweepConfigError(f"{what} is not a JSON object of weights: {e.msg}") from None
    return value if isinstance(value, dict) else None


_FIELDS = {"method", "metric", "parameters", "command", "program", "name", "early_terminate", "run_cap"}


def _metric(metric: Any, method: str) -> tuple[Optional[str], str]:
    """(name, goal); W&B's default goal is minimize (wandb/apis/public/sweeps.py, best_run)."""
    if metric is None:
        if method == "bayes":
            raise SweepConfigError("a bayes sweep needs metric.name: the metric it models")
        return None, "minimize"
    if not isinstance(metric, dict) or not metric.get("name") or not isinstance(metric["name"], str):
        raise SweepConfigError(f"metric must be a mapping with a name, e.g. {{name: val/auroc, goal: maximize}}; "
                               f"got {metric!r}")
    goal = metric.get("goal", "minimize")
    if goal not in GOALS:
        raise SweepConfigError(f"metric.goal {goal!r} is not allowed; W&B accepts {' or '.join(GOALS)}")
    return metric["name"], goal
