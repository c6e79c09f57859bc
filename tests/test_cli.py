"""The LightningCLI end to end: every config trains, runs never collide, W&B history is
what hyperband needs, predictions and test metrics are written."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import yaml
from conftest import CONFIGS, PYTHON, ROOT, run_dirs

from cli import cli_main


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_runs_a_tiny_fit(config, fit_args, tmp_path):
    cli = cli_main(fit_args(config))
    run_dir = cli.run_dir
    assert run_dir.parent.name == yaml.safe_load(config.read_text())["run"]["experiment"]
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    rows = read_csv(run_dir / "metrics.csv")
    assert any(r.get("val/auroc") for r in rows)
    # test split evaluated after fit with the best checkpoint, in the same run's logs
    assert any(r.get("test/auroc") for r in rows)
    assert (run_dir / "confusion_test.csv").is_file()


def test_second_identical_run_gets_its_own_directory(fit_args, tmp_path):
    args = fit_args("configs/demo.yaml", "--run.name=same", "--run.test_after_fit=false")
    first = cli_main(args).run_dir
    second = cli_main(args).run_dir
    assert first != second and first.parent == second.parent
    assert (first / "config.yaml").is_file() and (second / "config.yaml").is_file()


def test_second_identical_command_line_run_succeeds(hand_data, tmp_path):
    """As a user would type it twice: two processes, two run directories."""
    cmd = [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}",
           "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", "--trainer.fast_dev_run=1",
           "--data.image_size=32", "--data.num_workers=0", "--run.wandb=disabled"]
    for _ in range(2):
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(run_dirs(tmp_path)) == 2


def test_class_count_and_weights_reach_the_model_through_links(fit_args):
    cli = cli_main(fit_args("configs/demo.yaml", "--data.balancing=class_weights", "--trainer.fast_dev_run=1"))
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes == 2
    assert cli.model.class_names == ["normal", "abnormal"]
    weights = cli.model.hparams.class_weights
    counts = cli.datamodule.train_class_counts
    assert weights == cli.datamodule.class_weights
    # inverse frequency: the rarer class weighs more, and the weighted counts are equal
    assert weights[0] * counts[0] == pytest.approx(weights[1] * counts[1], rel=1e-4)


def test_predict_writes_per_image_probabilities(fit_args, hand_data):
    fit = cli_main(fit_args("configs/demo.yaml", "--run.test_after_fit=false"))
    ckpt = fit.run_dir / "checkpoints" / "last.ckpt"
    pred = cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), f"--ckpt_path={ckpt}"])
    rows = read_csv(pred.run_dir / "predictions.csv")
    assert len(rows) == len(pred.datamodule.split_records["test"]) > 0
    for row in rows:
        assert not row["path"].startswith("/") and (hand_data / row["path"]).is_file()
        assert sum(float(row[f"prob_{c}"]) for c in ("normal", "abnormal")) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"] in ("normal", "abnormal")


def test_wandb_offline_history_has_sweep_metric_once_per_validation_epoch(fit_args):
    from wandb_records import exit_code, history, run_file

    cli = cli_main(fit_args("configs/demo.yaml", "--run.wandb=offline", "--trainer.max_epochs=3",
                            "--sweep.metric=val/auroc"))
    rows = history(run_file(cli.run_dir))
    with_metric = [r for r in rows if "val/auroc" in r]
    # one row per validation epoch (not during the sanity check), x-axis in the same row
    assert [r["epoch"] for r in with_metric] == [0, 1, 2]
    # the test after fit logged to the same run, without adding sweep-metric rows
    assert any("test/auroc" in r for r in rows)
    assert exit_code(run_file(cli.run_dir)) == 0
    jsonl = [json.loads(line) for line in (cli.run_dir / "sweep_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in jsonl] == [0, 1, 2]
    assert [r["val/auroc"] for r in jsonl] == pytest.approx([r["val/auroc"] for r in with_metric])


def test_combined_objective_is_logged_as_one_metric(fit_args):
    objective = {"val/auroc": 0.7, "val/balanced_acc": 0.3}
    cli = cli_main(fit_args("configs/demo.yaml", "--trainer.max_epochs=2", "--sweep.metric=val/objective",
                            f"--sweep.objective={json.dumps(objective)}", "--run.test_after_fit=false"))
    val_rows = [r for r in read_csv(cli.run_dir / "metrics.csv") if r.get("val/objective")]
    assert len(val_rows) == 2
    for row in val_rows:
        expected = 0.7 * float(row["val/auroc"]) + 0.3 * float(row["val/balanced_acc"])
        assert float(row["val/objective"]) == pytest.approx(expected, rel=1e-5)
    jsonl = (cli.run_dir / "sweep_history.jsonl").read_text().splitlines()
    assert len(jsonl) == 2 and "val/objective" in json.loads(jsonl[0])


def test_objective_with_unknown_metric_is_rejected(fit_args):
    with pytest.raises(ValueError, match="val/auc.*allowed"):
        cli_main(fit_args("configs/demo.yaml", "--sweep.metric=val/objective", '--sweep.objective={"val/auc": 1.0}'))


@pytest.mark.parametrize(("optimizer", "expected"), [("sgd", 0.5), ("adamw", 0.9)])
def test_conditional_parameter_applies_only_under_its_parent_value(optimizer, expected):
    from conftest import parse_cli

    cfg = parse_cli(["fit", "--config", "configs/demo.yaml", "--sweep.when+=model.momentum:model.optimizer=sgd",
                     f"--model.optimizer={optimizer}", "--model.momentum=0.5"])
    assert cfg.model.optimizer == optimizer
    assert cfg.model.momentum == expected


def test_wandb_mode_never_goes_online_without_login(monkeypatch):
    from training.loggers import resolve_wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent")
    assert resolve_wandb_mode("auto") == "offline"
    assert resolve_wandb_mode("online") == "offline"  # not logged in: offline, syncable later
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("online") == "online"
    assert resolve_wandb_mode("auto") == "offline"  # auto: online only under an agent
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"
