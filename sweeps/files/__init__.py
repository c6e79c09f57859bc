"""Sweep files (README, "Architecture"): what the sweep commands and the README's Python examples use."""

from sweeps.files.build import create_custom_sweep_config, render_yaml, replace_config
from sweeps.files.io import load_sweep
from sweeps.files.presets import SWEEP_CONFIGS, get_sweep_config
from sweeps.files.sweep import Sweep

__all__ = [
    "SWEEP_CONFIGS",
    "Sweep",
    "create_custom_sweep_config",
    "get_sweep_config",
    "load_sweep",
    "render_yaml",
    "replace_config",
]
