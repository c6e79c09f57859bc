"""A sampler seeded per trial from (--seed, trial number) (README, "Sweeps without a W&B server").
Optuna's samplers draw from their own generator: two runners with the same --seed on one study
would draw the same sequence, each configuration twice. Trial numbers are unique in a study, so
runners draw distinct configurations, and one seed gives the same ones every time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Optional

import optuna
from optuna.samplers import BaseSampler


class PerTrialSeed(BaseSampler):
    """Delegates to `make(seed)`, made again in before_trial with a 32-bit seed from (seed, number)."""

    def __init__(self, make: Callable[[Optional[int]], BaseSampler], seed: Optional[int]) -> None:
        self._make, self._seed = make, seed
        self._sampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._seed is not None:
            self._sampler = self._make(random.Random(f"{self._seed}/{trial.number}").getrandbits(32))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space: dict) -> dict:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name: str, param_distribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()
