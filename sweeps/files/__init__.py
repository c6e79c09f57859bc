"""Sweep files: parameter names, what a sweep file may say, the Sweep object every command
reads, the checks against the CLI, the presets, and building, loading and writing W&B sweep
files whose program is the LightningCLI."""

from sweeps.files.build import create_custom_sweep_config, merge_custom_params, render_yaml, replace_config
from sweeps.files.check import DEFAULT_OBJECTIVE_NAME, check_for_cli, check_metric, validation_metrics
from sweeps.files.io import load_sweep, write_json_atomic
from sweeps.files.params import YACS_ALIASES, cli_parameters, resolve_name
from sweeps.files.presets import SWEEP_CONFIGS, get_sweep_config
from sweeps.files.schema import Parameter, check_early_terminate, infer_distribution, max_epochs_of
from sweeps.files.sweep import Condition, Sweep

__all__ = [
    "DEFAULT_OBJECTIVE_NAME",
    "SWEEP_CONFIGS",
    "YACS_ALIASES",
    "Condition",
    "Parameter",
    "Sweep",
    "check_early_terminate",
    "check_for_cli",
    "check_metric",
    "cli_parameters",
    "create_custom_sweep_config",
    "get_sweep_config",
    "infer_distribution",
    "load_sweep",
    "max_epochs_of",
    "merge_custom_params",
    "render_yaml",
    "replace_config",
    "resolve_name",
    "validation_metrics",
    "write_json_atomic",
]
