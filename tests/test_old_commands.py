"""The old tool's four documented commands, with the same flags, through `python -m sweeps run`
(offline by default) and `generate`: each runs here with a stand-in program (the CLI's
contract, a fraction of a second per run) and a small --count, and the sweep it built is
checked."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import yaml
from conftest import ROOT
from test_offline_runner import FAKE_CLI

from sweeps.main import main
from sweeps.runner import runner as runner_loop

CUSTOM = '{"TRAIN.LR": {"values": [0.001, 0.01]}, "TRAIN.BATCH_SIZE_PER_GPU": {"values": [16, 32]}}'
COMMANDS = {
    "quick_test": ("--cfg configs/ra_hand.yaml --sweep_config quick_test --count 4 --project my-experiment", 4),
    "learning_rate": ("--cfg configs/foot_xray.yaml --sweep_config learning_rate --count 3 "
                      "--project foot-xray-optimization", 3),
    "custom_foot_test": ("--cfg configs/foot.yaml --method grid --sweep_name custom_foot_test "
                         f"--custom_params {CUSTOM} --count 4", 4),
    "full_optimization": ("--cfg configs/ra_hand.yaml --sweep_config full_optimization --count 3 "
                          "--project large-scale-optimization", 3),
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A checkout whose cli.py is the stand-in: the same configs, runs that take no time."""
    (tmp_path / "cli.py").write_text(textwrap.dedent(FAKE_CLI))
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    for config in ("ra_hand", "foot_xray", "foot"):  # their data roots: `run` checks them before launching
        root = yaml.safe_load((tmp_path / "configs" / f"{config}.yaml").read_text())["data"]["root"]
        (tmp_path / root).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return tmp_path


def _argv(flags: str) -> list[str]:
    parts = flags.split(" --custom_params ")
    argv = parts[0].split()
    if len(parts) == 2:
        params, _, rest = parts[1].partition("} --")
        argv += ["--custom_params", params + "}", *("--" + rest).split()]
    return argv


@pytest.mark.parametrize("name", list(COMMANDS))
def test_old_command_runs_offline_and_builds_the_sweep(name, project):
    flags, count = COMMANDS[name]
    assert main(["run", *_argv(flags)]) == 0
    sweep_dir = project / "sweep_runs" / name
    sweep = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("runs/*/run.json"))]
    assert [r["state"] for r in runs] == ["finished"] * count
    cfg = flags.split()[1]
    assert sweep["command"][3:6] == ["fit", "--config", cfg]
    assert all(r["argv"][2:6] == ["cli.py", "fit", "--config", cfg] for r in runs)
    if "--project" in flags:
        assert sweep["project"] == flags.split("--project ")[1].split()[0]
    if name == "quick_test":
        assert sweep["method"] == "grid" and set(sweep["parameters"]) == {"model.lr", "model.optimizer",
                                                                           "trainer.max_epochs"}
    if name == "learning_rate":
        assert sweep["method"] == "bayes" and sweep["early_terminate"]["type"] == "hyperband"
    if name == "custom_foot_test":
        assert sweep["method"] == "grid" and sweep["name"] == "custom_foot_test"
        assert sweep["parameters"] == {"data.batch_size": {"values": [16, 32]},
                                       "model.lr": {"values": [0.001, 0.01]}}
        points = {(r["params"]["model.lr"], r["params"]["data.batch_size"]) for r in runs}
        assert points == {(0.001, 16), (0.001, 32), (0.01, 16), (0.01, 32)}
    if name == "full_optimization":
        assert sweep["metric"]["name"] == "val/objective"
        assert any(str(c).startswith("--sweep.objective=") for c in sweep["command"])


def test_a_missing_data_root_is_refused_before_launching_with_the_cfg_to_pass(project, capsys):
    """`python -m sweeps run sweeps/quick_test.yaml` without --cfg trains configs/ra_hand.yaml, whose
    data.root (data/ra_hand) a new user does not have: every run would fail on it."""
    shutil.rmtree(project / "data")
    sweep_file = project / "quick_test.yaml"
    shutil.copy(ROOT / "sweeps" / "quick_test.yaml", sweep_file)
    assert main(["run", str(sweep_file), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data.root data/ra_hand (from ra_hand.yaml) does not exist" in err and "--cfg configs/demo.yaml" in err
    assert not (project / "sweep_runs").exists()
    # the demo config generates its data into its data.root: nothing to check
    assert main(["run", str(sweep_file), "--cfg", "configs/demo.yaml", "--count", "1", "--quiet"]) == 0


def test_sweep_config_defaults_to_base(project):
    assert main(["run", "--cfg", "configs/ra_hand.yaml", "--count", "1", "--quiet"]) == 0
    sweep = yaml.safe_load((project / "sweep_runs" / "base" / "sweep.yaml").read_text())
    assert sweep["method"] == "bayes" and "model.weight_decay" in sweep["parameters"]


def test_generate_takes_the_same_flags_and_writes_the_custom_sweep(project, caplog):
    out = project / "custom.yaml"
    assert main(["generate", *_argv(COMMANDS["custom_foot_test"][0]), "-o", str(out)]) == 0
    sweep = yaml.safe_load(out.read_text())
    assert sweep["name"] == "custom_foot_test" and sweep["run_cap"] == 4
    assert sweep["parameters"] == {"data.batch_size": {"values": [16, 32]}, "model.lr": {"values": [0.001, 0.01]}}
    assert "TRAIN.LR is the old tool's name; using model.lr" in caplog.text
