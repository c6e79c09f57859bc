"""`python -m sweeps best`: the table, the best run, --export, errors; offline dirs and W&B (faked)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from sweeps.analysis import best_config, load_offline_runs, show_best
from sweeps.files import Sweep

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


def saved_config(params: dict) -> dict:
    """The config.yaml a run of SWEEP saves: its values as the CLI read them ("null" is None);
    momentum keeps the config's 0.9 when the optimizer is not sgd (the condition dropped it)."""
    used = {**params, "data.root": "/secret/patients", "sweep.when": ["model.momentum:model.optimizer=sgd"]}
    if params.get("model.optimizer") != "sgd":
        used["model.momentum"] = 0.9
    nested: dict = {"seed_everything": 42}
    for path, value in used.items():
        head, leaf = path.split(".")
        nested.setdefault(head, {})[leaf] = None if value == "null" else value
    return nested


def make_sweep_dir(root: Path, trials=TRIALS, sweep: dict = SWEEP, dists: dict = DISTS) -> Path:
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
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved_config(params)))
        completed = state in ("finished", "stopped")
        optuna_state = {"running": optuna.trial.TrialState.RUNNING}.get(
            state, optuna.trial.TrialState.COMPLETE if completed else optuna.trial.TrialState.FAIL)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, user_attrs=attrs, state=optuna_state,
            value=max(history) if completed else None))
    return sweep_dir


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    return make_sweep_dir(tmp_path)


def test_load_offline_runs(sweep_dir):
    sweep, runs = load_offline_runs(sweep_dir)
    assert sweep.name == "fixture_sweep" and len(runs) == 7
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


def test_best_config_is_what_the_run_saved_without_children_that_did_not_apply():
    sweep = Sweep.from_dict(dict(
        SWEEP, parameters={**SWEEP["parameters"], "model.warmup_epochs": {"values": [0, 2]}, "seed_everything": {"value": 7}},
        command=[*SWEEP["command"][:-1], "--sweep.when+=model.warmup_epochs:model.scheduler=cosine", "--cv.folds=5",
                 "${args}"]))
    config = {"seed_everything": 7, "trainer": {"gradient_clip_val": None, "max_epochs": 9}, "cv": {"folds": 5},
              "model": {"lr": 1e-4, "optimizer": "sgd", "momentum": 0.95, "scheduler": "step", "warmup_epochs": 2},
              "data": {"batch_size": 8, "root": "/secret"}, "sweep": {"metric": "val/auroc"}, "run": {"name": "x"}}
    # scheduler is not swept: whether warmup_epochs applied is read from the run's config
    assert best_config(sweep, config) == {
        "seed_everything": 7, "trainer": {"gradient_clip_val": None}, "data": {"batch_size": 8}, "cv": {"folds": 5},
        "model": {"lr": 1e-4, "optimizer": "sgd", "momentum": 0.95}}
    config["model"]["scheduler"] = "cosine"
    assert best_config(sweep, config)["model"]["warmup_epochs"] == 2


def test_export_takes_values_as_the_run_read_them(tmp_path, capsys):
    """A str option swept over a number-like value ("0.5"): the agent's argv says `--eval.threshold=0.5`,
    which the CLI reads as the string '0.5' (it is a str option); the export must say '0.5' too, or
    `cli.py fit --config best.yaml` refuses it (the old export, rebuilt from the argv, wrote 0.5)."""
    trials = [("finished", {"eval.threshold": value}, history, None)
              for value, history in (("youden", [0.7, 0.8]), ("0.5", [0.8, 0.9]))]
    sweep = dict(SWEEP, parameters={"eval.threshold": {"values": ["youden", "0.5"]}},
                 command=[c for c in SWEEP["command"] if not c.startswith("--sweep.when")])
    dists = {"eval.threshold": optuna.distributions.CategoricalDistribution(["youden", "0.5"])}
    sweep_dir = make_sweep_dir(tmp_path, trials=trials, sweep=sweep, dists=dists)
    best_yaml = tmp_path / "best.yaml"
    assert show_best(str(sweep_dir), export=str(best_yaml)) == 0
    assert yaml.safe_load(best_yaml.read_text()) == {"eval": {"threshold": "0.5"}}

    from conftest import parse_cli

    assert parse_cli(["fit", "--config", "configs/demo.yaml", "--config", str(best_yaml)]).eval.threshold == "0.5"


def test_a_metric_without_goal_is_minimized_as_by_wandb_and_the_runner(tmp_path, capsys):
    """W&B's default goal is minimize; the runner minimized such a sweep while `best` ranked it the other way."""
    sweep_dir = make_sweep_dir(tmp_path, trials=[t for t in TRIALS if t[0] == "finished"],
                               sweep=dict(SWEEP, metric={"name": "val/loss", "goal": "minimize"}))
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(dict(SWEEP, metric={"name": "val/loss"})))  # no goal
    assert show_best(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    assert "val/loss, minimize" in out and "best: run 0001" in out  # 0.80, the lowest value of the three


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


# ---- damaged run records (issue 19, item 10): that run is unreadable, the others are shown -----------

def _rewrite_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


RECORD_DAMAGE = {  # run.json of the best run (0004), read when the sweep has no optuna.db
    "run.json is a JSON list": (lambda p: _rewrite_json(p, lambda a: [a]), "not a JSON object"),
    "run.json is not JSON": (lambda p: p.write_text('{"state": "fini'), "cannot read run.json"),
    '"history": 5': (lambda p: _rewrite_json(p, lambda a: dict(a, history=5)), "history is not a list"),
    '"params": "lr"': (lambda p: _rewrite_json(p, lambda a: dict(a, params="lr")), "params is not a dict"),
    '"state": 3': (lambda p: _rewrite_json(p, lambda a: dict(a, state=3)), "state is not a str"),
    "run_dir outside the sweep": (lambda p: _rewrite_json(p, lambda a: dict(a, run_dir="../../elsewhere")),
                                  "not inside the sweep directory"),
}


@pytest.mark.parametrize("case", list(RECORD_DAMAGE))
def test_a_damaged_run_record_marks_that_run_unreadable(case, tmp_path, capsys):
    damage, reason = RECORD_DAMAGE[case]
    sweep_dir = make_sweep_dir(tmp_path)
    (sweep_dir / "optuna.db").unlink()
    damage(sweep_dir / "runs" / "0004" / "run.json")
    assert show_best(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("0004"))
    assert "unreadable" in row and reason in out, out
    assert "best: run 0000" in out  # the next best, 0.85
    assert "7 runs" in out and all(f"000{i}" in out for i in range(7))
    from sweeps.analysis.report import write_report

    text = write_report(sweep_dir).read_text()
    assert "0004: unreadable" in text and "Best run 0000" in text


def test_damaged_facts_in_the_optuna_storage_mark_that_run_unreadable(tmp_path, capsys):
    sweep_dir = make_sweep_dir(tmp_path)
    import sqlite3

    with sqlite3.connect(sweep_dir / "optuna.db") as db:  # the trial is finished: Optuna would refuse to change it
        db.execute("UPDATE trial_user_attributes SET value_json = '5' WHERE key = 'history' AND trial_id = "
                   "(SELECT trial_id FROM trials WHERE number = 1)")
    assert show_best(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    assert next(line for line in out.splitlines() if line.startswith("0001")).split()[1] == "unreadable:"
    assert "best: run 0004" in out


def test_a_non_object_line_in_a_finished_runs_history_is_skipped_as_the_runner_does(tmp_path, capsys):
    sweep_dir = make_sweep_dir(tmp_path)
    for path in (sweep_dir / "runs").glob("*/sweep_history.jsonl"):
        path.write_text('[1, 2]\n5\n"text"\nnull\n' + path.read_text())
    assert show_best(str(sweep_dir)) == 0
    assert "best: run 0004 (finished), val/auroc = 0.91" in capsys.readouterr().out
    from sweeps.analysis.report import write_report

    assert "Best run 0004" in write_report(sweep_dir).read_text()


@pytest.mark.parametrize("key", ["counts", "ci", "class_names", "metrics", "threshold"])
def test_a_damaged_test_report_is_named_and_the_rest_is_shown(key, tmp_path, capsys):
    from test_report import _test_report_json

    from sweeps.analysis.report import write_report

    sweep_dir = make_sweep_dir(tmp_path)
    path = sweep_dir / "runs" / "0004" / "test_report.json"
    _test_report_json(path)
    _rewrite_json(path, lambda report: {k: v for k, v in report.items() if k != key})
    assert show_best(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    assert "best: run 0004" in out and f"test_report.json is damaged (no '{key}')" in out
    text = write_report(sweep_dir).read_text()
    assert "Best run 0004" in text and '<section id="history">' in text and "0004" in text.split('id="runs"')[1]
    if key != "threshold":  # the page shows the threshold only when there is one
        assert f"test_report.json is damaged (no &#x27;{key}&#x27;)" in text


@pytest.mark.parametrize("command", ["best", "report"])
def test_best_and_report_do_not_import_torch_or_lightning(command, tmp_path):
    """`python -m sweeps best|report` read files and optuna.db: torch and Lightning (seconds to import,
    gigabytes on a login node) must stay out, also when the best run has test figures."""
    import subprocess
    import sys

    from conftest import ROOT
    from test_report import _test_report_json

    sweep_dir = make_sweep_dir(tmp_path)
    _test_report_json(sweep_dir / "runs" / "0004" / "test_report.json")
    program = ("import sys\nfrom sweeps.main import main\ncode = main(sys.argv[1:])\n"
               "print('imported:', sorted(m for m in ('torch', 'lightning', 'torchmetrics') if m in sys.modules))\n"
               "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", program, command, str(sweep_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported: []" in done.stdout, done.stdout[-2000:]
