"""Sweep files: W&B-valid, CLI-valid argv for sampled points, presets, errors that name the key."""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml
from conftest import SWEEP_FILES, parse_cli

import rundir.slots
from sweeps.errors import ParameterError, SweepConfigError
from sweeps.files import SWEEP_CONFIGS, create_custom_sweep_config, get_sweep_config, replace_config
from sweeps.files.schema import DISTRIBUTIONS
from sweeps.hyperband import hyperband_bands
from sweeps.main import main as sweeps_main
from sweeps.runner import agent_argv

# W&B's schema: additionalProperties is false at the top level (from W&B's sweeps package)
WANDB_TOP_LEVEL = {"method", "name", "description", "project", "entity", "program", "job", "image_uri",
                   "apiVersion", "kind", "command", "run_cap", "controller", "metric", "metrics", "scheduler",
                   "early_terminate", "parameters"}
WANDB_PARAM_KEYS = {"distribution", "value", "values", "probabilities", "min", "max", "q", "mu", "sigma", "a", "b"}


def test_six_presets_are_generated_and_checked_in():
    assert set(SWEEP_CONFIGS) == {"base", "quick_test", "learning_rate", "batch_size", "data_balancing",
                                  "full_optimization"}
    assert {p.stem for p in SWEEP_FILES} == set(SWEEP_CONFIGS)
    assert sweeps_main(["generate", "--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path):
    assert sweeps_main(["generate", "--out-dir", str(tmp_path)]) == 0
    stale = tmp_path / "base.yaml"
    stale.write_text(stale.read_text().replace("min_iter: 3", "min_iter: 2"))
    assert sweeps_main(["generate", "--check", "--out-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_shape_is_what_wandb_and_the_agent_need(path):
    text = path.read_text()
    sweep = yaml.safe_load(text)
    assert set(sweep) <= WANDB_TOP_LEVEL
    assert sweep["program"] == "cli.py"
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "${program}", "fit"]
    assert command[-1] == "${args}"
    assert command.index("--config") < command.index("${args}")  # sweep args after --config
    assert "command:\n- ${env}" in text  # a YAML block list, as W&B documents it
    for name, spec in sweep["parameters"].items():
        assert set(spec) <= WANDB_PARAM_KEYS, name  # no parent/parent_values: W&B rejects them
        assert spec.get("distribution", "categorical") in DISTRIBUTIONS or "value" in spec
        for value in spec.get("values", [spec.get("value")] if "value" in spec else []):
            assert value is not None, f"{name}: None would reach the CLI as `None`"
    assert sweep["metric"]["name"].startswith("val/")
    if "early_terminate" in sweep:
        max_epochs = yaml.safe_load(open(command[command.index("--config") + 1]))["trainer"]["max_epochs"]
        assert hyperband_bands(sweep["early_terminate"])[0] <= max_epochs


def _sample(spec: dict, rng: random.Random):
    """A value of each distribution, edges included, as W&B's engine could pick it."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    lo, hi = spec["min"], spec["max"]
    dist = spec.get("distribution", "int_uniform" if isinstance(lo, int) else "uniform")
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    value = rng.uniform(lo, hi)
    if dist == "q_uniform":
        value = round(value / spec.get("q", 1)) * spec.get("q", 1)
    return value


def _conditions(sweep: dict) -> dict[str, tuple[str, list[str]]]:
    from sweeps.contract.conditions import parse_condition

    out = {}
    for item in sweep["command"]:
        if item.startswith("--sweep.when+="):
            child, parent, values = parse_condition(item.split("=", 1)[1])
            out[child] = (parent, values)
    return out


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_agent_argv_for_sampled_points_parses_and_lands_where_it_should(path):
    sweep = yaml.safe_load(path.read_text())
    rng = random.Random(path.name)
    conditions = _conditions(sweep)
    defaults = parse_cli(["fit", "--config", "configs/ra_hand.yaml"])
    for _ in range(3):
        params = {name: _sample(spec, rng) for name, spec in sorted(sweep["parameters"].items())}
        argv = agent_argv(sweep, params)
        assert argv[:3] == ["/usr/bin/env", "python", "cli.py"]
        cfg = parse_cli(argv[3:])  # what cli.py receives after `/usr/bin/env python cli.py`
        assert cfg.sweep.metric == sweep["metric"]["name"]
        for name, value in params.items():
            landed = cfg.get(name)
            if name in conditions and str(cfg.get(conditions[name][0])) not in conditions[name][1]:
                assert landed == defaults.get(name), f"{name} applied although its parent does not match"
            elif isinstance(value, float):
                assert landed == pytest.approx(value), name
            else:
                assert landed == value, name


def test_argv_builder_matches_the_wandb_agent_format():
    sweep = {"program": "cli.py",
             "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml", "${args}"]}
    argv = agent_argv(sweep, {"model.lr": 1e-05, "trainer.max_epochs": 3, "run.test_after_fit": True})
    assert argv == ["/usr/bin/env", "python", "cli.py", "fit", "--config", "configs/demo.yaml", "--model.lr=1e-05",
                    "--trainer.max_epochs=3", "--run.test_after_fit=True"]
    cfg = parse_cli(argv[3:])
    assert cfg.model.lr == 1e-05 and cfg.run.test_after_fit is True


def test_null_values_are_written_so_the_cli_reads_none(tmp_path):
    sweep = create_custom_sweep_config(
        method="grid", config="configs/demo.yaml",
        parameters={"trainer.gradient_clip_val": {"values": [None, 1.0]}},
    )
    assert sweep["parameters"]["trainer.gradient_clip_val"]["values"] == ["null", 1.0]
    argv = agent_argv(sweep, {"trainer.gradient_clip_val": "null"})
    cfg = parse_cli(argv[argv.index("cli.py") + 1:])
    assert cfg.trainer.gradient_clip_val is None


def test_custom_params_override_and_yacs_aliases_map_with_a_notice(caplog):
    sweep = get_sweep_config("learning_rate", '{"TRAIN.BATCH_SIZE_PER_GPU": {"values": [4, 8]}}',
                             config="configs/demo.yaml")
    assert sweep["parameters"]["data.batch_size"] == {"values": [4, 8]}
    assert "TRAIN.BATCH_SIZE_PER_GPU" in caplog.text and "data.batch_size" in caplog.text


def test_conditional_parameter_is_resolved_into_the_command():
    sweep = get_sweep_config("base", config="configs/demo.yaml")
    assert "--sweep.when+=model.momentum:model.optimizer=sgd" in sweep["command"]
    assert "parent" not in sweep["parameters"]["model.momentum"]


def test_combined_objective_is_one_metric_name():
    sweep = create_custom_sweep_config(
        method="random", config="configs/demo.yaml", objective={"val/auroc": 0.6, "val/balanced_acc": 0.4},
        parameters={"model.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}},
    )
    assert sweep["metric"]["name"] == "val/objective"
    objective_arg = next(c for c in sweep["command"] if c.startswith("--sweep.objective="))
    assert json.loads(objective_arg.split("=", 1)[1]) == {"val/auroc": 0.6, "val/balanced_acc": 0.4}


def test_hyperband_bands_follow_wandbs_rule():
    assert hyperband_bands({"min_iter": 2, "eta": 3})[:3] == [2, 6, 18]
    assert hyperband_bands({"max_iter": 27, "s": 3, "eta": 3}) == [1, 3, 9]
    assert hyperband_bands({"max_iter": 81, "s": 2, "eta": 3}) == [9, 27]


def test_replace_config_swaps_the_trained_config():
    sweep = replace_config(get_sweep_config("quick_test"), "configs/demo.yaml")
    i = sweep["command"].index("--config")
    assert sweep["command"][i + 1] == "configs/demo.yaml"
    assert sweep["command"].count("--config") == 1


BAD_INPUTS = {
    "unknown preset": (["--sweep_config", "bse"], "Unknown sweep preset 'bse'.*Did you mean 'base'"),
    "unknown parameter": (["--custom_params", '{"model.lrr": {"values": [1]}}'], "model.lrr.*Did you mean model.lr"),
    "invalid json": (["--custom_params", '{"model.lr": '], "not valid JSON"),
    "unknown distribution": (["--custom_params", '{"model.lr": {"distribution": "lognormal", "min": 1, "max": 2}}'],
                             "lognormal.*allowed"),
    "min >= max": (["--custom_params", '{"model.lr": {"min": 0.1, "max": 0.01}}'], "min .0.1. must be less than max"),
    "missing parent": (["--custom_params", '{"model.momentum": {"values": [0.9], "parent": "model.optim", '
                        '"parent_values": ["sgd"]}}'], "model.optim"),
    "bad choice": (["--custom_params", '{"model.optimizer": {"values": ["lamb"]}}'], "lamb.*adamw"),
    "unreachable bracket": (["--sweep_config", "base", "--custom_params", '{"trainer.max_epochs": {"value": 2}}'],
                            "never be reached"),
    "missing config": (["--cfg", "configs/nope.yaml"], "configs/nope.yaml does not exist"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_generator_input_names_the_key_and_writes_nothing(case, tmp_path, capsys):
    args, message = BAD_INPUTS[case]
    code = sweeps_main(["generate", "--out-dir", str(tmp_path), *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    import re

    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_unknown_parameter_error_type():
    with pytest.raises(ParameterError, match="Did you mean"):
        create_custom_sweep_config(config="configs/demo.yaml", parameters={"data.batchsize": {"values": [1]}})


def test_grid_needs_discrete_values():
    with pytest.raises(SweepConfigError, match="grid search needs"):
        create_custom_sweep_config(method="grid", config="configs/demo.yaml",
                                   parameters={"model.lr": {"min": 0.001, "max": 0.01}})


def test_wandb_backend_starts_one_agent_per_gpu(monkeypatch, capsys):
    import argparse
    import subprocess
    import sys

    import wandb

    from sweeps.runner import wandb_agents

    started = []

    class FakeProc:
        def __init__(self, cmd, env):
            started.append((cmd, env.get("CUDA_VISIBLE_DEVICES")))

        def wait(self):
            return 0

    monkeypatch.setattr(wandb, "sweep", lambda sweep, project=None, entity=None: "abc123")
    monkeypatch.setattr(subprocess, "Popen", FakeProc)
    monkeypatch.setattr(rundir.slots, "probe", lambda: ["0", "1", "2", "3"])  # a machine with four GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    args = argparse.Namespace(cfg="configs/demo.yaml", gpus="0,1,2,3", gpus_per_trial=1, workers=None,
                              trials_per_gpu=1, count=10, project="xray", entity="lab")
    sweep = yaml.safe_load(open("sweeps/learning_rate.yaml"))
    assert wandb_agents.run_wandb_sweep(sweep, args) == 0
    assert [gpu for _, gpu in started] == ["0", "1", "2", "3"]
    cmd = started[0][0]
    assert cmd[:4] == [sys.executable, "-m", "wandb", "agent"]
    assert cmd[-1] == "lab/xray/abc123" and cmd[cmd.index("--count") + 1] == "3"


def test_metric_names_are_checked_against_what_the_model_logs():
    params = {"model.lr": {"values": [1e-3]}}
    with pytest.raises(SweepConfigError, match="'val/auc' is not one the model logs"):
        create_custom_sweep_config(config="configs/demo.yaml", parameters=params, metric_name="val/auc")
    with pytest.raises(SweepConfigError, match="needs a name of its own"):
        create_custom_sweep_config(config="configs/demo.yaml", parameters=params, metric_name="val/auroc",
                                   objective={"val/auroc": 1.0})
    loss = create_custom_sweep_config(config="configs/demo.yaml", parameters=params, metric_name="val/loss")
    assert loss["metric"] == {"name": "val/loss", "goal": "minimize"}


def test_asking_a_preset_with_an_objective_for_a_plain_metric_drops_the_objective():
    sweep = get_sweep_config("full_optimization", config="configs/demo.yaml", metric_name="val/balanced_acc")
    assert sweep["metric"]["name"] == "val/balanced_acc"
    assert not any(c.startswith("--sweep.objective") for c in sweep["command"])
    assert "--sweep.metric=val/balanced_acc" in sweep["command"]


def test_swapping_the_config_rechecks_hyperband_brackets(tmp_path):
    short = tmp_path / "short.yaml"
    short.write_text("trainer:\n  max_epochs: 2\n")
    sweep = get_sweep_config("base", config="configs/demo.yaml")  # min_iter 3
    with pytest.raises(SweepConfigError, match="never be reached"):
        replace_config(sweep, str(short))


def test_sweeps_may_optimise_exactly_what_the_model_logs_per_task(tmp_path):
    params = {"model.lr": {"values": [1e-3]}}
    ece = create_custom_sweep_config(config="configs/demo.yaml", parameters=params, metric_name="val/ece")
    assert ece["metric"] == {"name": "val/ece", "goal": "minimize"}
    spec90 = create_custom_sweep_config(config="configs/demo.yaml", parameters=params,
                                        metric_name="val/sensitivity_at_spec90")
    assert spec90["metric"]["goal"] == "maximize"
    three = tmp_path / "three.yaml"
    three.write_text("data:\n  classes: [normal, oa, ra]\n")
    for name in ("val/sensitivity_at_spec90", "val/sensitivity", "val/average_precision"):
        with pytest.raises(SweepConfigError, match=f"'{name}' is not one the model logs for 3 classes"):
            create_custom_sweep_config(config=str(three), parameters=params, metric_name=name)
    assert create_custom_sweep_config(config=str(three), parameters=params, metric_name="val/ece")


def test_every_cli_option_is_a_known_sweep_parameter():
    """The CLI builds its parser from the one registry of option groups (sweeps/contract/groups.py)
    that the sweep tools read the parameter names from: a group the CLI has and the registry lacks
    (eval.* was once) would make every sweep over it fail before launching."""
    from sweeps.contract.groups import GROUPS, LINKS
    from sweeps.files.params import cli_parameters

    cfg = parse_cli(["fit", "--config", "configs/demo.yaml"])
    groups = {key.split(".")[0] for key in cfg.keys() if "." in key}  # keys are flat: group.option
    assert groups == set(GROUPS), groups ^ set(GROUPS)
    known = cli_parameters()
    linked = {target for _, target in LINKS}
    paths = {f"{group}.{key}" for group in GROUPS for key in cfg[group].keys() if "." not in key}
    missing = sorted(paths - set(known) - linked)
    assert not missing and {"eval.threshold", "eval.bootstrap_resamples", "cv.folds"} <= set(known), missing
    assert not linked & set(known)  # set from the data module: not free parameters


def _literal_values(annotation):
    """The values a Literal allows, also inside Optional/Union; None when another type takes part."""
    import types
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [{None} if a is type(None) else _literal_values(a) for a in typing.get_args(annotation)]
        return None if None in parts else set().union(*parts)
    return None


def test_allowed_values_read_from_source_are_those_of_the_imported_classes():
    """The sweep tools read option choices from the classes' source (no torch); the classes
    themselves, imported, must allow exactly the same."""
    import dataclasses
    import typing

    from sweeps.contract.groups import GROUPS, load
    from sweeps.files.params import cli_parameters

    known = cli_parameters()
    for group in GROUPS:
        cls = load(group)
        hints = typing.get_type_hints(cls if dataclasses.is_dataclass(cls) else cls.__init__)
        for option, annotation in hints.items():
            if f"{group}.{option}" in known:
                values = known[f"{group}.{option}"]
                assert (None if values is None else set(values)) == _literal_values(annotation), (group, option)


def test_sweeps_over_precision_and_deterministic_pass_the_check():
    """trainer.precision's Literal is a Union of three, trainer.deterministic is bool or 'warn':
    only the first Literal of a Union was taken, refusing 'bf16-mixed' and true."""
    from pathlib import Path

    from sweeps.files.check import check_for_cli
    from sweeps.files.sweep import Sweep

    sweep = Sweep.from_dict({
        "program": "cli.py", "method": "grid", "metric": {"name": "val/auroc", "goal": "maximize"},
        "parameters": {"trainer.precision": {"values": ["bf16-mixed", "32-true", 16]},
                       "trainer.deterministic": {"values": [True, False, "warn"]}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml", "${args}"]})
    check_for_cli(sweep, Path(__file__).resolve().parents[1])
    with pytest.raises(SweepConfigError, match="trainer.precision: value\\(s\\) \\['fp8'\\] not allowed"):
        check_for_cli(Sweep.from_dict({**sweep.to_dict(), "parameters": {"trainer.precision": {"values": ["fp8"]}}}),
                      Path(__file__).resolve().parents[1])


def test_generate_does_not_import_torch_or_lightning():
    """`python -m sweeps generate` checks parameter names against the CLI's option classes without
    importing them (24 s and 0.9 GB on a loaded box before, for six small files)."""
    import subprocess
    import sys

    from conftest import ROOT

    program = ("import sys\nfrom sweeps.main import main\ncode = main(sys.argv[1:])\n"
               "print('imported:', sorted(m for m in ('torch', 'lightning', 'torchmetrics') if m in sys.modules))\n"
               "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", program, "generate", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported: []" in done.stdout, done.stdout[-2000:]


def test_a_swept_combined_objective_is_checked_value_by_value():
    """`sweep.objective` as a parameter (a sweep of objectives, as the CV hyperband test has): its
    metric has a name of its own, and each value's terms must be validation metrics."""
    from pathlib import Path

    from sweeps.files.check import check_for_cli
    from sweeps.files.sweep import Sweep

    def sweep(values):
        return Sweep.from_dict({
            "program": "cli.py", "method": "grid", "metric": {"name": "val/objective", "goal": "maximize"},
            "parameters": {"sweep.objective": {"values": values}},
            "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                        "--sweep.metric=val/objective", "${args}"]})

    root = Path(__file__).resolve().parents[1]
    check_for_cli(sweep([{"val/auroc": 0.9}, {"val/auroc": 0.5, "val/balanced_acc": 0.5}]), root)
    with pytest.raises(SweepConfigError, match="objective terms \\['test/auroc'\\] are not allowed"):
        check_for_cli(sweep([{"val/auroc": 1.0}, {"test/auroc": 1.0}]), root)
