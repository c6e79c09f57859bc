"""The LightningCLI end to end: every config trains, runs never collide, W&B history is
what hyperband needs, predictions and test metrics are written."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
import torch
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


def _figures(report: dict) -> dict[str, float]:
    """Every number of a test report, by its path (the validation calibration left out: the
    test after fit has the validation outputs at hand, a separate `test` needs none)."""
    out: dict[str, float] = {}

    def walk(value, path: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}/{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}/{i}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)

    walk({k: v for k, v in report.items() if k != "validation_calibration"}, "")
    return out


# chosen on validation, or fixed (no validation pass; in make test-slow)
@pytest.mark.parametrize("threshold", ["youden", pytest.param("0.5", marks=pytest.mark.slow)])
def test_test_after_fit_uses_the_best_checkpoint_not_the_last(fit_args, threshold):
    """Three epochs; from the second on the weights are scrambled (fault_callbacks.WorsenAfterEpoch),
    so the best checkpoint (by val/loss) is epoch 0 and the last one is far worse. The test
    after fit must report exactly what `cli.py test` reports on the best checkpoint."""
    monitor = ["--run.monitor=val/loss", "--run.monitor_mode=min", "--trainer.limit_test_batches=3",
               "--eval.bootstrap_resamples=200", f"--eval.threshold={threshold}"]
    fit = cli_main(fit_args("configs/demo.yaml", "--trainer.max_epochs=3", *monitor,
                            "--trainer.callbacks+=fault_callbacks.WorsenAfterEpoch"))
    checkpoints = fit.run_dir / "checkpoints"
    best = checkpoints / "best-epoch=000.ckpt"
    assert fit.checkpoint.best_model_path == str(best)
    rows = read_csv(fit.run_dir / "metrics.csv")
    val_loss = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val_loss) == 3 and val_loss[0] < min(val_loss[1:])  # the premise: best != last
    # last.ckpt is the last epoch's (Lightning 2.6's save_last=True would have left it at the best),
    # and each carries the operating point chosen on validation with its own weights
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2
    stored = torch.load(best, weights_only=False)["operating_point"]
    assert stored is not None and last["operating_point"] is not None
    assert fit.evaluation.point.to_dict() == stored  # the test after fit used the best weights' point

    def test(ckpt) -> tuple[dict, dict]:
        cli = fit if ckpt is None else cli_main([*fit_args(subcommand="test"), *monitor, f"--ckpt_path={ckpt}"])
        rows = read_csv(cli.run_dir / "metrics.csv")
        logged = {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/") and v}
        assert len([r for r in rows if r.get("test/loss")]) == 1  # one test, once
        return _figures(json.loads((cli.run_dir / "test_report.json").read_text())), logged

    (after_fit, logged), (on_best, best_logged) = test(None), test(best)
    on_last, last_logged = test(checkpoints / "last.ckpt")
    assert after_fit.keys() == on_best.keys() and "/metrics/auroc/estimate" in after_fit
    assert after_fit == pytest.approx(on_best, rel=1e-6, abs=1e-9, nan_ok=True)
    assert logged["test/loss"] == pytest.approx(best_logged["test/loss"], rel=1e-6)
    # the check can tell the two checkpoints apart
    assert on_last != pytest.approx(on_best, rel=1e-3, nan_ok=True)
    assert last_logged["test/loss"] != pytest.approx(best_logged["test/loss"], rel=1e-3)
    # the test/* rows of the fit's metrics.csv come from the same report
    assert logged["test/auroc"] == pytest.approx(after_fit["/metrics/auroc/estimate"], rel=1e-6)
    assert logged["test/threshold"] == pytest.approx(after_fit["/threshold/value"], rel=1e-6)


def test_second_identical_run_gets_its_own_directory(fit_args, tmp_path):
    args = fit_args("configs/demo.yaml", "--run.name=same", "--run.test_after_fit=false")
    first = cli_main(args).run_dir
    second = cli_main(args).run_dir
    assert first != second and first.parent == second.parent
    assert (first / "config.yaml").is_file() and (second / "config.yaml").is_file()


@pytest.mark.slow  # several processes, 10-40 s on two cores
def test_second_identical_command_line_run_succeeds(hand_data, tmp_path):
    """As a user would type it twice: two processes, two run directories."""
    cmd = [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}",
           "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", "--trainer.fast_dev_run=1",
           "--data.image_size=32", "--data.num_workers=0", "--run.wandb=disabled"]
    for _ in range(2):
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(run_dirs(tmp_path)) == 2


def _labelled_batch(cli, split: str = "train") -> list:
    """One batch of `split` as the model sees it (pixels normalised), holding both classes."""
    dm = cli.datamodule
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader}[split]()
    xs, ys, idx = zip(*loader)
    batch = [torch.cat(xs), torch.cat(ys), torch.cat(idx)]
    assert set(batch[1].tolist()) == {0, 1}, "the check needs both classes in the batch"
    return dm.on_after_batch_transfer(batch, 0)


def test_class_weights_reach_the_loss(fit_args):
    cli = cli_main(fit_args("configs/demo.yaml", "--data.balancing=class_weights", "--trainer.fast_dev_run=1"))
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes == 2
    assert cli.model.class_names == ["normal", "abnormal"]
    # inverse frequency (mean 1), from the training split's labels counted here
    labels = [r.label for r in cli.datamodule.split_records["train"]]
    counts = [labels.count("normal"), labels.count("abnormal")]
    weights = [len(labels) / (2 * c) for c in counts]
    assert cli.model.hparams.class_weights == pytest.approx(weights, rel=1e-5)
    assert weights[0] != pytest.approx(weights[1], rel=0.05)  # unequal: the check below can tell
    # the loss the model trains on is the weighted cross-entropy, computed by hand
    model = cli.model.eval()
    x, y, _ = _labelled_batch(cli)
    with torch.no_grad():
        loss, logits, _ = model.model_step([x, y])
    logits, w = logits.double(), torch.tensor(weights, dtype=torch.float64)[y]
    nll = torch.logsumexp(logits, dim=1) - logits[torch.arange(len(y)), y]
    assert float(loss) == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-5)
    assert float(loss) != pytest.approx(float(nll.mean()), rel=1e-3)  # not the unweighted loss


def test_classification_metrics_equal_hand_computed_values():
    from models.metrics import ClassificationMetrics

    # positive-class probabilities and labels; at the 0.5 cut: TP 2, FN 2, FP 1, TN 2
    p = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.6, 0.2, 0.1])
    y = torch.tensor([1, 1, 1, 1, 0, 0, 0])
    metrics = ClassificationMetrics(2)
    metrics.update(torch.stack([1 - p, p], dim=1), y)
    values = {k: float(v) for k, v in metrics.compute().items()}
    assert values == pytest.approx({
        "auroc": 10 / 12,  # positive above negative in 10 of the 4 x 3 pairs
        "sensitivity": 2 / 4, "specificity": 2 / 3, "acc": 4 / 7,
        "balanced_acc": (2 / 4 + 2 / 3) / 2, "f1": 2 * 2 / (2 * 2 + 1 + 2),
        # precision at each positive, by descending score: 1/1, 2/2, 3/4, 4/5
        "average_precision": (1 + 1 + 3 / 4 + 4 / 5) / 4,
        # specificity >= 0.9 of 3 negatives means no false positive: cut above 0.6, 2 of 4 found
        "sensitivity_at_spec90": 2 / 4,
        # 15 bins: every score alone in its bin, so ECE is the mean |label - score|
        "ece": (0.1 + 0.2 + 0.6 + 0.7 + 0.6 + 0.2 + 0.1) / 7}, rel=1e-6)


def _auroc(scores, positive) -> float:
    pos = [s for s, t in zip(scores, positive) if t]
    neg = [s for s, t in zip(scores, positive) if not t]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_positive_class_is_the_last_of_data_classes(fit_args):
    """classes: [abnormal, normal] makes `normal` the positive class of every binary figure:
    validation metrics and the test report equal hand-computed ones with normal positive."""
    cli = cli_main(fit_args("configs/demo.yaml", "--data.classes=[abnormal, normal]", "--trainer.limit_val_batches=4",
                            "--trainer.limit_test_batches=4", "--eval.bootstrap_resamples=200"))
    assert cli.model.class_names == ["abnormal", "normal"]
    records = {"val": cli.datamodule.records_of("val"), "test": cli.datamodule.records_of("test")}
    expected = {}
    for split in ("val", "test"):
        out = cli.evaluation.outputs[split]
        normal = [records[split][i].label == "normal" for i in out["index"]]
        assert out["labels"].tolist() == [int(n) for n in normal]  # label 1 is normal
        assert 0 < sum(normal) < len(normal), f"the {split} check needs both classes"
        expected[split] = (torch.softmax(torch.as_tensor(out["logits"], dtype=torch.float64), 1)[:, 1].tolist(), normal)

    # validation: torchmetrics' figures at 0.5 (strictly above), logged once for the one epoch
    scores, normal = expected["val"]
    predicted = [s > 0.5 for s in scores]
    [row] = [r for r in read_csv(cli.run_dir / "metrics.csv") if r.get("val/auroc")]
    tp = sum(p and n for p, n in zip(predicted, normal))
    tn = sum(not p and not n for p, n in zip(predicted, normal))
    logged = {k: float(row[f"val/{k}"]) for k in ("auroc", "sensitivity", "specificity", "acc")}
    assert logged == pytest.approx({"auroc": _auroc(scores, normal), "sensitivity": tp / sum(normal),
                                    "specificity": tn / (len(normal) - sum(normal)),
                                    "acc": (tp + tn) / len(normal)}, abs=1e-5)

    # test report: at the threshold chosen on validation (probability >= threshold is positive)
    report = json.loads((cli.run_dir / "test_report.json").read_text())
    scores, normal = expected["test"]
    cut = report["threshold"]["value"]
    predicted = [s >= cut for s in scores]
    tp = sum(p and n for p, n in zip(predicted, normal))
    tn = sum(not p and not n for p, n in zip(predicted, normal))
    figures = {k: report["metrics"][k]["estimate"] for k in ("auroc", "sensitivity", "specificity")}
    assert figures == pytest.approx({"auroc": _auroc(scores, normal), "sensitivity": tp / sum(normal),
                                     "specificity": tn / (len(normal) - sum(normal))}, abs=1e-9)
    assert report["counts"]["images_per_class"] == {"abnormal": len(normal) - sum(normal), "normal": sum(normal)}


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


def test_epoch_figures_are_logged_without_a_cross_rank_reduction(fit_args, monkeypatch):
    """val/* and test/* are computed from every rank's gathered outputs, so every rank holds the
    same, global values: reducing them again across ranks is at best a no-op, and on NCCL (no
    CPU backend) a crash for a value computed on the CPU, which Gloo on the CPU hides. Whatever
    does cross ranks (sync_dist=True) must be on the module's device."""
    import lightning.pytorch as pl

    calls: list[tuple[str, bool, object, object]] = []
    original = pl.LightningModule.log

    def spy(self, name, value, *args, **kwargs):
        device = value.device if isinstance(value, torch.Tensor) else None
        calls.append((name, bool(kwargs.get("sync_dist", False)), device, self.device))
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", spy)
    cli_main(fit_args("configs/demo.yaml", "--eval.bootstrap_resamples=100"))
    epoch_figures = [c for c in calls if c[0].startswith(("val/", "test/"))]
    assert {"val/loss", "val/auroc", "test/loss"} <= {c[0] for c in epoch_figures}
    assert [c[0] for c in epoch_figures if c[1]] == []  # none reduced across ranks
    assert all(device == module for _, synced, device, module in calls if synced)


# compute capability -> precision, as NVIDIA documents the architectures (bf16 natively from Ampere)
KNOWN_GPUS = [
    ("H200", "9.0", "bf16-mixed"), ("H100", "9.0", "bf16-mixed"), ("L4", "8.9", "bf16-mixed"),
    ("RTX 3090 / A10", "8.6", "bf16-mixed"), ("A100", "8.0", "bf16-mixed"), ("T4", "7.5", "16-mixed"),
    ("V100", "7.0", "16-mixed"), ("P100", "6.0", "32-true"), ("K80", "3.7", "32-true"),
]


def _fake_nvidia_smi(monkeypatch, rows: list[tuple[int, str, str]]) -> list[list[str]]:
    import subprocess

    seen: list[list[str]] = []

    def run(argv, **kwargs):
        seen.append(list(argv))
        if argv[0] != "nvidia-smi":
            raise AssertionError(argv)
        out = "".join(f"{i}, {uuid}, {cap}\n" for i, uuid, cap in rows)
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    return seen


def _no_cuda_context(monkeypatch) -> None:
    """torch says a GPU is there; anything that would create a CUDA context fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("creates a CUDA context")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for name in ("is_bf16_supported", "current_device", "mem_get_info", "get_device_capability",
                 "get_device_properties", "init", "_lazy_init", "set_device"):
        monkeypatch.setattr(torch.cuda, name, refuse)


@pytest.mark.parametrize(("gpu", "capability", "expected"), KNOWN_GPUS, ids=[g[0] for g in KNOWN_GPUS])
def test_precision_follows_the_gpus_compute_capability_without_a_cuda_context(gpu, capability, expected,
                                                                             monkeypatch):
    from rundir.slots import default_precision

    _no_cuda_context(monkeypatch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _fake_nvidia_smi(monkeypatch, [(0, "GPU-aaaa-1111", capability), (1, "GPU-bbbb-2222", "3.7")])
    assert default_precision() == expected
    assert default_precision("gpu") == expected


def test_precision_is_that_of_the_gpu_this_process_sees(monkeypatch):
    from rundir.slots import default_precision

    _no_cuda_context(monkeypatch)
    rows = [(0, "GPU-aaaa-1111", "7.0"), (1, "GPU-bbbb-2222", "9.0")]
    seen = _fake_nvidia_smi(monkeypatch, rows)
    for visible, expected in (("1", "bf16-mixed"), ("0,1", "16-mixed"), ("GPU-bbbb", "bf16-mixed"),
                              ("GPU-aaaa-1111,GPU-bbbb-2222", "16-mixed"), ("MIG-1234-5678", "bf16-mixed"),
                              ("", "32-true"), ("7", "32-true")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert default_precision() == expected, visible
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert default_precision("cpu") == "32-true"  # asks nothing
    calls = len(seen)
    default_precision("cpu")
    assert len(seen) == calls


def test_precision_without_a_driver_is_full_precision(monkeypatch):
    import subprocess

    from rundir.slots import default_precision

    _no_cuda_context(monkeypatch)

    def missing(argv, **kwargs):
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(subprocess, "run", missing)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert default_precision() == "32-true"


def test_a_stop_before_training_starts_ends_the_run_cleanly(fit_args, monkeypatch):
    """SIGTERM while the run is still setting up (a W&B agent may stop it that early): no training,
    the run counts as stopped, no traceback (it failed with "generator didn't yield")."""
    from sweeps.contract.signals import StopSignal

    install = StopSignal.install

    def install_then_stop():
        install()
        StopSignal.request("SIGTERM")

    monkeypatch.setattr(StopSignal, "install", install_then_stop)
    cli = cli_main(fit_args("configs/demo.yaml"))
    assert cli.stopped and cli.trainer.global_step == 0
    assert not (cli.run_dir / "checkpoints" / "last.ckpt").exists()
