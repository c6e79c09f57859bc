"""The runs of a W&B sweep, read with wandb.Api(), as the same records as an offline sweep's
(sweeps/analysis/results.py). A W&B run's config holds the values the agent set for it."""

from __future__ import annotations

import yaml

from models.metric_names import DEFAULT_METRIC
from rundir.layout import COMPLETED
from sweeps.contract.history import best_of
from sweeps.errors import UsageError
from sweeps.files.schema import NULL
from sweeps.files.sweep import Sweep


def load_wandb_runs(path: str) -> tuple[Sweep, list[dict]]:
    try:
        import wandb

        api = wandb.Api(timeout=20)
        remote = api.sweep(path)
        data = dict(remote.config)
        data.setdefault("metric", {"name": DEFAULT_METRIC, "goal": "maximize"})  # a grid/random sweep may have none
        sweep = Sweep.from_dict(data)
        metric, goal = sweep.metric, sweep.goal
        runs = []
        for i, run in enumerate(remote.runs):
            history = [row[metric] for row in run.scan_history(keys=[metric])
                       if isinstance(row.get(metric), (int, float))]
            value = best_of(history, goal)
            if value is None and isinstance(run.summary.get(metric), (int, float)):
                value = float(run.summary[metric])
            config = {k: v["value"] if isinstance(v, dict) and set(v) == {"value"} else v
                      for k, v in dict(run.config).items()}
            # The agent sets the swept values, as sampled ("null" is what the CLI read as None); the options
            # the sweep's command fixes are not in a W&B run's config, so they are taken from the command.
            config.update({k: None for k in sweep.parameters if config.get(k) == NULL})
            config.update({k: yaml.safe_load(v) for k, v in sweep.fixed_options.items() if k not in config})
            spread = None
            if isinstance(run.summary.get(f"{metric}_std"), (int, float)):  # a cross-validated run
                stds = {row[metric]: row[f"{metric}_std"] for row in run.scan_history(keys=[metric, f"{metric}_std"])}
                spread = stds.get(value)
            # W&B has no "stopped": a run the agent stops exits 0 (finished); killed = stopped by hand
            state = {"crashed": "failed", "killed": "stopped"}.get(run.state, run.state)
            runs.append({
                "number": i, "name": run.name or run.id, "state": state,
                "value": value if state in COMPLETED else None, "history": history,
                "params": {k: config[k] for k in sweep.parameters if k in config},
                "run_dir": None, "reason": None, "wall_s": run.summary.get("_runtime"),
                "config": config, "std": spread,
            })
    except Exception as e:  # no key, no network, no such sweep, a config we cannot read: wandb raises many kinds
        raise UsageError(
            f"cannot read W&B sweep {path}: {str(e).rstrip('.')}. On a machine without W&B access use the offline "
            f"sweep directory instead: python -m sweeps best sweep_runs/<sweep name>"
        ) from e
    return sweep, runs
