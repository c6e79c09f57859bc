"""What one parameter and the early termination of a W&B sweep file may say (W&B's sweep-config
schema, which rejects unknown keys), each parsed here once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from sweeps.errors import SweepConfigError
from sweeps.hyperband import hyperband_bands

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
CONDITION_KEYS = {"parent", "parent_values"}  # presets' conditions; never written to a sweep file
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")  # W&B's grid enumerates these
NULL = "null"  # None as a sweep value: the agent writes values with str(), and the CLI reads `null`


@dataclass(frozen=True)
class Parameter:
    """One sweep parameter: its CLI path, its W&B distribution and its W&B-ready spec."""

    name: str
    distribution: str
    spec: dict

    @property
    def choices(self) -> list:
        """The values of a constant or categorical parameter (none for a range)."""
        return list(self.spec.get("values", [self.spec["value"]] if "value" in self.spec else []))


def infer_distribution(name: str, spec: dict) -> str:
    """W&B's defaults: value -> constant, values -> categorical, int min/max -> int_uniform."""
    if "distribution" in spec:
        dist = spec["distribution"]
        if dist not in DISTRIBUTIONS:
            raise SweepConfigError(f"parameters.{name}.distribution {dist!r} is unknown; allowed: "
                                   f"{', '.join(DISTRIBUTIONS)}")
        return dist
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        return "int_uniform" if _whole(spec["min"]) and _whole(spec["max"]) else "uniform"
    raise SweepConfigError(f"parameters.{name} needs `value`, `values`, `min`/`max` or a `distribution`")


def null_safe(value: Any) -> Any:
    return NULL if value is None else [null_safe(v) for v in value] if isinstance(value, list) else value


def parse_parameter(name: str, spec: Any, method: str) -> Parameter:
    """One parameter of a sweep file, checked as W&B checks it."""
    if not isinstance(spec, dict):
        raise SweepConfigError(f"parameters.{name} must be a mapping such as {{values: [...]}}, got {spec!r}")
    if "parameters" in spec:
        raise SweepConfigError(f"parameters.{name}: nested parameters are not supported; parameters are CLI paths "
                               "such as model.lr")
    dist = infer_distribution(name, spec)
    required, optional = DISTRIBUTIONS[dist]
    allowed = required | optional | {"distribution"}
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
        if not all(_number(v) for v in (lo, hi)):
            raise SweepConfigError(f"parameters.{name}: min and max must be numbers, got {lo!r}, {hi!r}")
        if lo >= hi:
            raise SweepConfigError(f"parameters.{name}: min ({lo}) must be less than max ({hi})")
        if "log" in dist and lo <= 0:
            raise SweepConfigError(f"parameters.{name}: {dist} needs min > 0, got {lo}")
        if dist == "int_uniform" and not all(isinstance(v, int) for v in (lo, hi)):
            raise SweepConfigError(f"parameters.{name}: int_uniform needs integer min and max, got {lo}, {hi}")
    if "q" in spec and (not _number(spec["q"]) or spec["q"] <= 0):
        raise SweepConfigError(f"parameters.{name}.q must be a number > 0, got {spec['q']!r}")
    if "values" in spec:
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"parameters.{name}.values must be a non-empty list, got {values!r}")
        if dist == "categorical_w_probabilities":
            probs = spec["probabilities"]
            if not isinstance(probs, list) or len(probs) != len(values) or not all(_number(p) for p in probs) \
                    or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
                raise SweepConfigError(f"parameters.{name}.probabilities must match values and sum to 1")
    if method == "grid" and dist not in GRID_DISTRIBUTIONS:
        raise SweepConfigError(f"parameters.{name}: grid search needs categorical, constant, int_uniform or "
                               f"q_uniform parameters (`values` or `value`), not {dist} (W&B's rule)")
    return Parameter(name, dist, dict(spec))


def check_early_terminate(early_terminate: dict) -> dict:
    """The hyperband settings W&B accepts, refused otherwise before anything runs: W&B reads
    max_iter (with s) before min_iter, and raises on a config that yields no bands."""
    if not isinstance(early_terminate, dict):
        raise SweepConfigError(f"early_terminate must be a mapping such as {{type: hyperband, min_iter: 3}}, "
                               f"got {early_terminate!r}")
    et = dict(early_terminate)
    et.setdefault("type", "hyperband")
    unknown = sorted(set(et) - HYPERBAND_KEYS)
    if et["type"] != "hyperband" or unknown:
        raise SweepConfigError(
            f"early_terminate: only type hyperband with keys {sorted(HYPERBAND_KEYS)} is supported; got {et}"
        )
    if "max_iter" in et and "s" not in et:
        raise SweepConfigError("early_terminate.max_iter needs s (the number of brackets); W&B reads max_iter "
                               "and s before min_iter. Give s, or min_iter alone")
    if "min_iter" not in et and "max_iter" not in et:
        raise SweepConfigError("early_terminate (hyperband) needs min_iter, or max_iter and s")
    eta = et.get("eta", 3)
    if not _number(eta) or eta <= 1:
        raise SweepConfigError(f"early_terminate.eta must be a number > 1, got {eta!r}")
    for key in ("min_iter", "max_iter", "s"):
        if key in et and (not _whole(et[key]) or et[key] < 1):
            raise SweepConfigError(f"early_terminate.{key} must be a whole number >= 1, got {et[key]!r}")
    if "strict" in et and not isinstance(et["strict"], bool):
        raise SweepConfigError(f"early_terminate.strict must be true or false, got {et['strict']!r}")
    if not hyperband_bands(et):
        raise SweepConfigError(f"early_terminate {et} gives no hyperband bracket (max_iter {et['max_iter']} / eta "
                               f"{eta} < 1); W&B refuses it. Raise max_iter or s, or lower eta")
    return et


def check_brackets(et: dict, max_epochs: Optional[int]) -> None:
    """A checked early_terminate's first bracket (and min_iter, max_iter) within trainer.max_epochs."""
    bands = hyperband_bands(et)
    if max_epochs is not None and max(bands[0], et.get("min_iter", 0), et.get("max_iter", 0)) > max_epochs:
        raise SweepConfigError(
            f"early_terminate {et}: brackets at epochs {bands[:5]} but trainer.max_epochs is "
            f"{max_epochs}, so a bracket can never be reached; lower min_iter/max_iter (they count epochs)"
        )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_config(path: str) -> dict:
    """A LightningCLI config file as a dict."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SweepConfigError(f"Cannot read LightningCLI config {path}: {e}") from e
    if not isinstance(data, dict):
        raise SweepConfigError(f"LightningCLI config {path} is not a mapping of options")
    return data
