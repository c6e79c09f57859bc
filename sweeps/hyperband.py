"""W&B's hyperband early-termination rule as a pure function, for the offline runner.

Faithful to W&B's `sweeps/hyperband_stopping.py` (`hyperband_stop_runs`):
  * a run's history is the list of finite values of the sweep metric, one per validation
    epoch, in order (negated when the goal is maximize, so that lower is always better);
  * bands: from max_iter and s when max_iter is given (W&B checks it first, even when
    min_iter is given too), else min_iter * eta**k;
  * band b compares runs after their b-th value; its threshold is
    sorted(values at b over ALL runs that reached b, any state)[int((1.0 / eta) * len)]
    (W&B's expression: for a non-integer eta it can differ by one from int(len / eta));
  * a RUNNING run is judged at the largest band it reached: it stops when its value there
    (strict, the default) or its best value so far (strict: false) is above the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StopDecision:
    run: Hashable
    band: int  # number of validation epochs the run is judged after
    value: float  # in the metric's own sign
    threshold: float  # in the metric's own sign

    def reason(self, metric: str, goal: str) -> str:
        side = "below" if goal == "maximize" else "above"
        return (f"hyperband: {metric} {self.value:.4g} after {self.band} epoch(s) {side} "
                f"bracket threshold {self.threshold:.4g}")


def hyperband_bands(early_terminate: dict) -> list[int]:
    """The iterations at which W&B's hyperband compares runs."""
    eta = early_terminate.get("eta", 3)
    if "max_iter" in early_terminate:
        band, bands = float(early_terminate["max_iter"]), []
        for _ in range(int(early_terminate["s"])):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        return sorted(bands)
    return [int(early_terminate["min_iter"] * eta**k) for k in range(100)]


def thresholds(histories: Sequence[Sequence[float]], bands: Sequence[int], eta: float) -> dict[int, float]:
    """Per band: the value a run must not exceed (lower is better) to stay."""
    out = {}
    for band in bands:
        values = sorted(h[band - 1] for h in histories if len(h) >= band)
        out[band] = values[int((1.0 / eta) * len(values))] if values else math.inf
    return out


def hyperband_stop(
    histories: Mapping[Hashable, Sequence[float | None]],
    running: Sequence[Hashable],
    early_terminate: dict,
    goal: str = "maximize",
) -> list[StopDecision]:
    """The running runs to stop. `histories`: run -> sweep metric per validation epoch, for
    every run of the sweep (any state); `running`: the runs that may be stopped."""
    eta = early_terminate.get("eta", 3)
    strict = early_terminate.get("strict", True)
    sign = -1.0 if goal == "maximize" else 1.0
    signed = {run: [sign * float(v) for v in h if isinstance(v, (int, float)) and math.isfinite(v)]
              for run, h in histories.items()}
    max_len = max((len(h) for h in signed.values()), default=0)
    # min_iter gives 100 bands growing geometrically; only those some run reached matter.
    bands = [b for b in hyperband_bands(early_terminate) if b <= max_len]
    limits = thresholds([h for h in signed.values() if h], bands, eta)
    decisions = []
    for run in running:
        history = signed.get(run) or []
        reached = [b for b in bands if b <= len(history)]
        if not reached:
            continue
        band = reached[-1]
        value = history[band - 1] if strict else min(history)
        if value > limits[band]:
            decisions.append(StopDecision(run, band, sign * value, sign * limits[band]))
    return decisions
