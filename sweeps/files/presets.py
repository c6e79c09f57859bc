"""The six sweeps the old tool offered, as keyword arguments of create_custom_sweep_config.

Ranges are for radiograph classifiers fine-tuned or trained from scratch at 256-512 px;
hyperband brackets are in epochs (the metric is logged once per validation epoch).

early_terminate min_iter 3, eta 3 (every preset that stops early) is measured, not guessed: on
LCBench (benchmarks/README.md, "LCBench"; 10 instances, 52-epoch curves, budget 30 full runs),
W&B's rule at 3:3 with random search reached plain random search's final regret with 0.28-0.32
of its compute in every sweep (50/50, 20/20); 2:3 and 3:4 were as fast (0.28) but missed it in
1/20, 1:3 in 6/20 (one epoch ranks configurations badly: learning curves cross), 5:3 and 2:2
were slower (0.36, 0.35). Bands 3, 9, 27 fit the configs' 20-30 epochs.
"""

from __future__ import annotations

import copy
import difflib
from typing import Optional

from sweeps.errors import SweepConfigError
from sweeps.files.build import create_custom_sweep_config, merge_custom_params
from sweeps.files.check import validation_metrics

_OPTIMISATION = {  # base and full_optimization
    "model.lr": {"distribution": "log_uniform_values", "min": 1.0e-5, "max": 3.0e-3},
    "model.weight_decay": {"distribution": "log_uniform_values", "min": 1.0e-6, "max": 1.0e-2},
    "model.optimizer": {"values": ["adamw", "adam", "sgd"]},
    "model.momentum": {"distribution": "uniform", "min": 0.8, "max": 0.99, "parent": "model.optimizer",
                       "parent_values": ["sgd"]},
}

SWEEP_CONFIGS: dict[str, dict] = {
    "base": {
        "method": "bayes",
        "description": "Bayesian search over the main knobs, with hyperband early termination.",
        "parameters": {
            **_OPTIMISATION,
            "data.batch_size": {"values": [8, 16, 32]},
            "model.dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
            "model.label_smoothing": {"values": [0.0, 0.05, 0.1]},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},
    },
    "quick_test": {
        "method": "grid",
        "description": "Four short runs to check the set-up end to end before a real sweep.",
        "parameters": {
            "model.lr": {"values": [3.0e-4, 2.0e-3]},
            "model.optimizer": {"values": ["adamw", "sgd"]},
            "trainer.max_epochs": {"value": 3},
        },
    },
    "learning_rate": {
        "method": "bayes",
        "description": "Learning rate and its schedule; everything else from the config.",
        "parameters": {
            "model.lr": {"distribution": "log_uniform_values", "min": 1.0e-5, "max": 1.0e-2},
            "model.scheduler": {"values": ["cosine", "step", "plateau", "none"]},
            "model.warmup_epochs": {"values": [0, 1, 2], "parent": "model.scheduler", "parent_values": ["cosine"]},
        },
        "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},
    },
    "batch_size": {
        "method": "grid",
        "description": "Per-GPU batch size against learning rate (larger batches usually want larger rates).",
        "parameters": {
            "data.batch_size": {"values": [8, 16, 32, 64]},
            "model.lr": {"values": [1.0e-4, 3.0e-4, 1.0e-3]},
        },
    },
    "data_balancing": {
        "method": "grid",
        "description": "How to handle the minority (abnormal) class; judged on balanced accuracy.",
        "metric_name": "val/balanced_acc",
        "parameters": {
            "data.balancing": {"values": ["none", "class_weights", "weighted_sampler", "oversample"]},
            "model.label_smoothing": {"values": [0.0, 0.1]},
        },
    },
    "full_optimization": {
        "method": "bayes",
        "description": "Architecture, resolution, optimisation, regularisation, balancing and augmentation.",
        "parameters": {
            "model.backbone": {"values": ["resnet34", "resnet50", "densenet121", "efficientnet_b0", "convnext_tiny"]},
            "data.image_size": {"values": [256, 384, 512]},
            **_OPTIMISATION,
            "model.scheduler": {"values": ["cosine", "step", "plateau"]},
            "model.warmup_epochs": {"values": [0, 1, 3], "parent": "model.scheduler", "parent_values": ["cosine"]},
            "model.label_smoothing": {"distribution": "uniform", "min": 0.0, "max": 0.2},
            "model.dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
            "data.batch_size": {"values": [8, 16, 32]},
            "data.balancing": {"values": ["none", "class_weights", "weighted_sampler", "oversample"]},
            "data.rotation_degrees": {"distribution": "q_uniform", "min": 0, "max": 20, "q": 5},
            "data.intensity_jitter": {"distribution": "uniform", "min": 0.0, "max": 0.3},
            "data.hflip_prob": {"values": [0.0, 0.5]},
        },
        "objective": {"val/auroc": 0.5, "val/balanced_acc": 0.5},
        "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3},
    },
}


def get_sweep_config(
    name: str,
    custom_params: Optional[dict | str] = None,
    *,
    config: str | list[str] = "configs/ra_hand.yaml",
    sweep_name: Optional[str] = None,
    **overrides,
) -> dict:
    """The preset `name` as a W&B sweep config, with custom_params merged into its parameters
    and any create_custom_sweep_config keyword (method, metric_name, ...) overridden."""
    if name not in SWEEP_CONFIGS:
        close = difflib.get_close_matches(name, SWEEP_CONFIGS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SweepConfigError(f"Unknown sweep preset {name!r}; presets: {', '.join(SWEEP_CONFIGS)}.{hint}")
    preset = copy.deepcopy(SWEEP_CONFIGS[name])
    preset["parameters"] = merge_custom_params(preset["parameters"], custom_params)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("metric_name") in validation_metrics(None):
        preset.pop("objective", None)  # asking for a plain metric replaces the preset's objective
    preset.update(overrides)
    preset["name"] = sweep_name or name
    return create_custom_sweep_config(config=config, **preset)
