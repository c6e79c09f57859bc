"""`python -m sweeps best`: the table, the best run, --export, errors; offline dirs and W&B (faked)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from sweeps.analysis import best_config, load_offline_runs, show_best
from sweeps.analysis.results import from_cli

SWEEP = {
    "program": "cli.py",
    "name": "fixture_sweep",
    "method": "bayes",
    "metric": {"name": "val/auroc", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
    "parameters": {
        "model.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
        "model.optimizer": {"values": ["adamw", "sgd"]},
        "model.momentum": {"distribution": "uniform", "min": 0.8, "max": 0.99},
        "data.batch_size": {"values": [8, 16, 32]},
        "trainer.gradient_clip_val": {"values": ["null", 1.0]},
    },
    "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                "--sweep.when+=model.momentum:model.optimizer=sgd", "${args}"],
}
DISTS = {
    "model.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
    "model.optimizer": optuna.distributions.CategoricalDistribution(["adamw", "sgd"]),
    "model.momentum": optuna.distributions.FloatDistribution(0.8, 0.99),
    "data.batch_size": optuna.distributions.CategoricalDistribution([8, 16, 32]),
    "trainer.gradient_clip_val": optuna.distributions.CategoricalDistribution(["null", 1.0]),
}
# (state, params, history, reason): momentum is sampled every time, applied only for sgd.
TRIALS = [
    ("finished", {"model.lr": 1e-3, "model.optimizer": "adamw", "model.momentum": 0.9, "data.batch_size": 16,
                  "trainer.gradient_clip_val": "null"}, [0.70, 0.80, 0.85, 0.84], None),
    ("finished", {"model.lr": 3e-3, "model.optimizer": "sgd", "model.momentum": 0.9, "data.batch_size": 8,
                  "trainer.gradient_clip_val": 1.0}, [0.60, 0.70, 0.78, 0.80], None),
    ("stopped", {"model.lr": 1e-4, "model.optimizer": "adamw", "model.momentum": 0.82, "data.batch_size": 8,
                 "trainer.gradient_clip_val": 1.0}, [0.55, 0.60], "hyperband: below the band at epoch 2"),
    ("failed", {"model.lr": 8e-3, "model.optimizer": "sgd", "model.momentum": 0.85, "data.batch_size": 32,
                "trainer.gradient_clip_val": "null"}, [0.50], "exit code 2: cannot read /data/ra_hand/p17/img.dcm"),
    ("finished", {"model.lr": 5e-4, "model.optimizer": "adamw", "model.momentum": 0.95, "data.batch_size": 32,
                  "trainer.gradient_clip_val": "null"}, [0.75, 0.88, 0.91, 0.90], None),
    ("stopped", {"model.lr": 1e-2, "model.optimizer": "sgd", "model.momentum": 0.85, "data.batch_size": 16,
                 "trainer.gradient_clip_val": 1.0}, [0.50, 0.52], "hyperband: below the band at epoch 2"),
    ("running", {"model.lr": 2e-4, "model.optimizer": "adamw", "model.momentum": 0.9, "data.batch_size": 16,
                 "trainer.gradient_clip_val": 1.0}, [0.65], None),
]


def make_sweep_dir(root: Path, trials=TRIALS, sweep: dict = SWEEP) -> Path:
    """An offline sweep directory as the runner writes it: sweep.yaml, optuna.db, runs/NNNN/."""
    sweep_dir = root / "sweep_runs" / sweep["name"]
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    study = optuna.create_study(storage=f"sqlite:///{sweep_dir / 'optuna.db'}", study_name=sweep["name"],
                                direction=sweep["metric"]["goal"])
    metric = sweep["metric"]["name"]
    for number, (state, params, history, reason) in enumerate(trials):
        run_dir = sweep_dir / "runs" / f"{number:04d}"
        (run_dir / "checkpoints").mkdir(parents=True)
        attrs = {"run_dir": f"runs/{number:04d}", "state": state, "reason": reason,
                 "history": [] if state == "running" else history, "argv": ["python", "cli.py", "fit"],
                 "exit_code": None if state == "running" else (2 if state == "failed" else 0),
                 "wall_s": 10.0 * len(history), "params": params}
        (run_dir / "run.json").write_text(json.dumps(attrs))
        (run_dir / "sweep_history.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "step": 10 * (e + 1), metric: v}) + "\n" for e, v in enumerate(history)))
        (run_dir / "metrics.csv").write_text("epoch,step,train/loss_epoch,val/loss,val/auroc\n" + "".join(
            f"{e},{10 * (e + 1)},,0.5,{v}\n{e},{10 * (e + 1)},0.6,,\n" for e, v in enumerate(history)))
        (run_dir / "output.log").write_text("training...\n")
        nested: dict = {}
        for path, value in {**params, "data.root": "/secret/patients"}.items():
            head, leaf = path.split(".")
            nested.setdefault(head, {})[leaf] = value
        (run_dir / "config.yaml").write_text(yaml.safe_dump(nested))
        completed = state in ("finished", "stopped")
        optuna_state = {"running": optuna.trial.TrialState.RUNNING}.get(
            state, optuna.trial.TrialState.COMPLETE if completed else optuna.trial.TrialState.FAIL)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: DISTS[k] for k in params}, user_attrs=attrs, state=optuna_state,
            value=max(history) if completed else None))
    return sweep_dir


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return make_sweep_dir(tmp_path)


def test_load_offline_runs(sweep_dir):
    sweep, runs = load_offline_runs(sweep_dir)
    assert sweep["name"] == "fixture_sweep" and len(runs) == 7
    assert [r["state"] for r in runs][:4] == ["finished", "finished", "stopped", "failed"]
    assert runs[4]["value"] == pytest.approx(0.91) and runs[3]["value"] is None
    assert runs[6]["history"] == [0.65]  # running: read live from sweep_history.jsonl
    assert set(runs[0]) >= {"number", "state", "value", "history", "params", "run_dir", "reason", "wall_s"}


def test_show_best_prints_table_and_best(sweep_dir, capsys):
    assert show_best(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert lines[header + 1].startswith("0004") and "0.91" in lines[header + 1]  # best first
    assert any(line.startswith("0002") and "stopped" in line for line in lines)
    assert any(line.startswith("0003") and "failed: exit code 2" in line for line in lines)
    assert "best: run 0004" in out and "model.lr: 0.0005" in out
    assert "model.momentum" not in out.split("best: run")[1].split("run dir")[0]  # adamw: not applied
    assert str(sweep_dir / "runs" / "0004") in out


def test_export_is_a_lightningcli_config(sweep_dir, tmp_path, capsys):
    best_yaml = tmp_path / "best.yaml"
    assert show_best(str(sweep_dir), export=str(best_yaml)) == 0
    exported = yaml.safe_load(best_yaml.read_text())
    assert exported == {"trainer": {"gradient_clip_val": None}, "model": {"lr": 5e-4, "optimizer": "adamw"},
                        "data": {"batch_size": 32}}
    assert "configs/demo.yaml --config best.yaml" in best_yaml.read_text()
    assert not list(tmp_path.glob(".best.yaml.*"))  # no temp file left behind

    from conftest import parse_cli

    cfg = parse_cli(["fit", "--config", "configs/demo.yaml", "--config", str(best_yaml)])
    assert cfg.model.lr == 5e-4 and cfg.model.optimizer == "adamw" and cfg.data.batch_size == 32
    assert cfg.trainer.gradient_clip_val is None
    assert cfg.model.momentum == 0.9  # the class default, not the 0.95 the adamw run never used


def test_best_config_keeps_applied_children_and_drops_sweep_keys():
    sweep = dict(SWEEP, command=SWEEP["command"][:-1] + ["--sweep.when+=model.warmup_epochs:model.scheduler=cosine",
                                                        "${args}"])
    params = {"model.optimizer": "sgd", "model.momentum": "0.95", "sweep.metric": "val/auroc", "run.name": "x",
              "model.warmup_epochs": 2, "seed_everything": 7, "TRAIN.LR": "1e-4"}
    # scheduler is not swept: its value comes from the run's full config
    assert best_config(sweep, params, {"model": {"scheduler": "step"}}) == {
        "seed_everything": 7, "model": {"optimizer": "sgd", "momentum": 0.95, "lr": 1e-4}}
    assert best_config(sweep, params, {"model": {"scheduler": "cosine"}})["model"]["warmup_epochs"] == 2


@pytest.mark.parametrize("text, value", [("null", None), ("None", None), ("none", "none"), ("1e-5", 1e-5),
                                         ("32", 32), ("true", True), ("resnet34", "resnet34"), (0.5, 0.5)])
def test_from_cli(text, value):
    assert from_cli(text) == value and type(from_cli(text)) is type(value)


def test_not_a_sweep_dir(tmp_path, capsys):
    assert show_best(str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "not a sweep directory" in err and "Traceback" not in err


def test_missing_dir_that_is_not_a_wandb_path(tmp_path, capsys):
    assert show_best(str(tmp_path / "nope")) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_no_completed_run(tmp_path, capsys):
    sweep_dir = make_sweep_dir(tmp_path, trials=[t for t in TRIALS if t[0] in ("failed", "running")])
    assert show_best(str(sweep_dir)) == 2
    captured = capsys.readouterr()
    assert "no completed run" in captured.err and str(sweep_dir) in captured.err
    assert "0000" in captured.out  # the table is still shown


def test_export_into_missing_directory(sweep_dir, tmp_path, capsys):
    target = tmp_path / "missing" / "best.yaml"
    assert show_best(str(sweep_dir), export=str(target)) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err and not target.exists()


def test_main_best_exit_code(sweep_dir, tmp_path):
    from sweeps.main import main

    assert main(["best", str(sweep_dir), "--export", str(tmp_path / "b.yaml")]) == 0
    assert main(["best", str(tmp_path / "empty")]) == 2


def test_run_json_fallback_without_optuna_db(sweep_dir, capsys):
    (sweep_dir / "optuna.db").unlink()  # e.g. the sweep used --storage postgresql://...
    assert show_best(str(sweep_dir)) == 0
    assert "best: run 0004" in capsys.readouterr().out


class _FakeRun:
    def __init__(self, name, state, config, history):
        self.name, self.id, self.state, self._history = name, name, state, history
        self.config = {k: {"value": v} for k, v in config.items()} | {"lr": config.get("model.lr")}
        self.summary = {"_runtime": 60.0, "val/auroc": history[-1] if history else None}

    def scan_history(self, keys):
        return [{"_step": i, keys[0]: v} for i, v in enumerate(self._history)]


class _FakeSweep:
    def __init__(self):
        self.config = SWEEP
        self.runs = [_FakeRun(f"run-{i}", {"failed": "crashed", "stopped": "finished", "running": "running"}.get(
            state, state), params, history) for i, (state, params, history, _) in enumerate(TRIALS)]


def test_wandb_sweep(monkeypatch, tmp_path, capsys):
    import wandb

    class FakeApi:
        def __init__(self, **kwargs):
            pass

        def sweep(self, path):
            assert path == "team/xray/abc123"
            return _FakeSweep()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    best_yaml = tmp_path / "best.yaml"
    assert show_best("team/xray/abc123", export=str(best_yaml)) == 0
    out = capsys.readouterr().out
    assert "best: run run-4" in out and "run-3" in out and "failed" in out
    assert yaml.safe_load(best_yaml.read_text()) == {
        "trainer": {"gradient_clip_val": None}, "model": {"lr": 5e-4, "optimizer": "adamw"},
        "data": {"batch_size": 32}}


def test_wandb_unreachable(monkeypatch, capsys):
    import wandb

    class DownApi:
        def __init__(self, **kwargs):
            raise wandb.errors.CommError("Failed to connect to api.wandb.ai")

    monkeypatch.setattr(wandb, "Api", DownApi)
    assert show_best("team/xray/abc123") == 2
    err = capsys.readouterr().err
    assert "team/xray/abc123" in err and "offline sweep directory" in err and "Traceback" not in err


def test_cross_validated_runs_show_mean_and_spread_across_folds(tmp_path, capsys):
    """best's table and the report's optimisation history show mean ± sd for CV runs."""
    import json as _json

    from sweeps.analysis.report import write_report

    sweep_dir = make_sweep_dir(tmp_path)
    for path in sorted((sweep_dir / "runs").glob("*/sweep_history.jsonl")):
        rows = [_json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            row["val/auroc_std"] = 0.0123
        path.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    assert show_best(str(sweep_dir)) == 0
    assert "± 0.0123" in capsys.readouterr().out
    text = write_report(sweep_dir).read_text()
    assert '"error_y":{"array":[0.0123' in text.replace(" ", "")
