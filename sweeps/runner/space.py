"""A sweep's parameters (parsed by sweeps/files) as Optuna distributions and samplers; README,
"Sweeps without a W&B server" (Methods), lists them. inv_log_uniform_values is log-uniform too: W&B
draws log(1/x) uniformly, i.e. log(x) uniformly. categorical_w_probabilities is a uniform [0, 1)
mapped through the cumulative probabilities, so that random sampling follows the weights.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from sweeps.errors import RunnerError
from sweeps.files.schema import DISTRIBUTIONS, Parameter
from sweeps.files.sweep import Sweep

UNSUPPORTED = ("normal", "log_normal", "q_normal", "q_log_normal", "beta", "q_beta")
SUPPORTED = tuple(d for d in DISTRIBUTIONS if d not in UNSUPPORTED)
MAX_GRID_POINTS = 100_000  # a grid larger than this is a mistake (10 x 10 values ... is 10^10)


@dataclass
class Param:
    name: str
    dist: Any  # optuna.distributions.BaseDistribution
    decode: Callable[[Any], Any] = lambda v: v  # Optuna value -> value on the command line
    grid: Optional[list] = None  # Optuna values of the grid points


def _categorical(name: str, values: list) -> Param:
    from optuna.distributions import CategoricalDistribution

    scalar = all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
    if scalar and all(values.index(v) == i for i, v in enumerate(values)):  # else indices: 1 == True == 1.0
        return Param(name, CategoricalDistribution(values), grid=list(values))
    return Param(name, CategoricalDistribution(list(range(len(values)))), lambda i: values[i],
                 grid=list(range(len(values))))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _quantize(q: float) -> Callable[[float], Any]:
    def decode(x: float) -> Any:
        v = round(x / q) * q
        return int(v) if _is_int(q) else float(f"{v:.12g}")  # W&B: an int when q is an int
    return decode


def map_parameter(param: Parameter, method: str) -> Optional[Param]:
    """The Optuna form of one W&B parameter (parsed and checked by sweeps/files); None for a constant."""
    from optuna.distributions import FloatDistribution, IntDistribution

    name, spec, dist = param.name, param.spec, param.distribution
    if dist in UNSUPPORTED:
        raise RunnerError(
            f"parameters.{name}: distribution {dist} has no Optuna equivalent; the offline runner "
            f"supports {', '.join(SUPPORTED)} (run this sweep with `wandb agent` instead)"
        )
    if dist == "constant":
        return None
    lo, hi = spec.get("min"), spec.get("max")
    q = spec.get("q", 1.0)
    if dist == "categorical":
        return _categorical(name, list(spec["values"]))
    if method == "grid" and dist == "int_uniform":
        return _categorical(name, list(range(lo, hi + 1)))
    if method == "grid":  # q_uniform, the last one schema.GRID_DISTRIBUTIONS allows; W&B: arange(min, max, q)
        n = math.ceil((hi - lo) / q - 1e-9)
        return _categorical(name, [_quantize(q)(lo + k * q) if not _is_int(q) else lo + k * q
                                   for k in range(n)])
    if dist == "categorical_w_probabilities":
        values, cum = list(spec["values"]), list(itertools.accumulate(spec["probabilities"]))
        return Param(name, FloatDistribution(0.0, 1.0),
                     lambda u: values[min(bisect.bisect_right(cum, u), len(values) - 1)])
    if dist == "int_uniform":
        return Param(name, IntDistribution(lo, hi))
    if dist == "uniform":
        return Param(name, FloatDistribution(lo, hi))
    if dist == "q_uniform":
        if all(_is_int(v) for v in (lo, hi, q)) and lo % q == 0 and hi % q == 0:
            return Param(name, IntDistribution(lo, hi, step=q))
        if all(math.isclose(x / q, round(x / q), abs_tol=1e-9) for x in (lo, hi)):  # aligned to q
            return Param(name, FloatDistribution(lo, hi, step=q), _quantize(q))
        return Param(name, FloatDistribution(lo, hi), _quantize(q))
    if dist in ("log_uniform_values", "inv_log_uniform_values"):
        return Param(name, FloatDistribution(lo, hi, log=True))
    return Param(name, FloatDistribution(lo, hi, log=True), _quantize(q))  # q_log_uniform_values


@dataclass
class Space:
    method: str
    constants: dict[str, Any]
    params: list[Param]
    order: list[str]  # the sweep file's parameter order, for the command line

    @property
    def distributions(self) -> dict:
        return {p.name: p.dist for p in self.params}

    def values(self, sampled: dict) -> dict:
        """Every parameter's command-line value, in the sweep file's order."""
        decoded = {p.name: p.decode(sampled[p.name]) for p in self.params}
        return {n: decoded[n] if n in decoded else self.constants[n] for n in self.order}

    def grid_size(self) -> int:
        return math.prod(len(p.grid or []) for p in self.params)

    def grid_points(self) -> Iterator[dict]:
        """The grid in W&B's order, one point at a time (never the whole product in memory)."""
        names = [p.name for p in self.params]
        return (dict(zip(names, combo)) for combo in itertools.product(*(p.grid for p in self.params)))

    def key(self, params: dict) -> tuple:
        return tuple((p.name, repr(params.get(p.name))) for p in self.params)


def build_space(sweep: Sweep) -> Space:
    mapped = {name: map_parameter(parameter, sweep.method) for name, parameter in sweep.parameters.items()}
    constants = {name: sweep.parameters[name].spec["value"] for name, p in mapped.items() if p is None}
    params = [p for p in mapped.values() if p is not None]
    space = Space(sweep.method, constants, params, list(sweep.parameters))
    if sweep.method == "grid" and space.grid_size() > MAX_GRID_POINTS:
        sizes = " x ".join(f"{len(p.grid)} ({p.name})" for p in params)
        raise RunnerError(f"the grid has {space.grid_size():,} points ({sizes}), more than the {MAX_GRID_POINTS:,} "
                          "a sweep can run; use method random or bayes, or fewer values")
    return space


def make_sampler(space: Space, seed: Optional[int]):
    """grid: the runner enqueues every point itself (fixed parameters), so the sampler is never
    asked; Optuna's GridSampler is not used, since it fails on trials it did not plan.
    random/bayes: seeded per trial from (seed, trial number), see sweeps/runner/sampler.py."""
    import optuna

    from sweeps.runner.sampler import PerTrialSeed

    if space.method == "bayes":
        return PerTrialSeed(lambda s: optuna.samplers.TPESampler(seed=s, multivariate=True), seed)
    return PerTrialSeed(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
