"""Results a clinician can trust, end to end through the CLI: the operating point is chosen on
validation (never on test) at the end of fit, stored in the checkpoints and the run summary,
and used by the test after fit, `test` and `predict`; test_report.json carries every figure
with its patient-level 95% interval and the counts, and names no patient."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from training.cli import cli_main

FAST = ["--eval.bootstrap_resamples=200", "--trainer.max_epochs=2"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, hand_data):
    """One tiny fit shared by the tests that only read its outputs."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("fit")
    args = ["fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}", "--demo.body_part=null",
            f"--run.root={root / 'runs'}", *TINY, *FAST]
    cli = cli_main(args)
    return cli, args


def _report(run_dir):
    return json.loads((run_dir / "test_report.json").read_text())


def test_threshold_is_chosen_on_validation_without_reading_the_test_split(fit_args, monkeypatch):
    import training.evaluate as evaluate
    from datamodules.datamodule import XrayDataModule

    calls: list[str] = []
    original_test, original_choose = XrayDataModule.test_dataloader, evaluate.choose_operating_point
    monkeypatch.setattr(XrayDataModule, "test_dataloader", lambda self: calls.append("test") or original_test(self))

    def choose(logits, labels, options, patient_ids=None):
        calls.append(f"choose:{len(labels)}")
        return original_choose(logits, labels, options, patient_ids)

    monkeypatch.setattr(evaluate, "choose_operating_point", choose)
    cli = cli_main(fit_args("configs/demo.yaml", *FAST))
    n_val = len(cli.datamodule.split_records["val"])
    # chosen on all of val for each epoch's weights (stored with them), before test is read
    assert calls == [f"choose:{n_val}"] * 2 + ["test"]
    report = _report(cli.run_dir)
    assert report["threshold"]["rule"] == "youden"
    assert report["threshold"]["value"] == cli.evaluation.point.threshold.value


def test_same_validation_same_threshold_whatever_the_test_labels(fitted, hand_data, tmp_path):
    """Flipping every test label changes the test figures, never the operating point."""
    import shutil

    cli, args = fitted
    copy = tmp_path / "flipped"
    shutil.copytree(hand_data, copy)
    test_rel = {r.rel for r in cli.datamodule.split_records["test"]}
    lines = (copy / "manifest.csv").read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        path, label, patient = line.split(",")
        if path in test_rel:
            label = "normal" if label == "abnormal" else "abnormal"
        out.append(",".join((path, label, patient)))
    (copy / "manifest.csv").write_text("\n".join(out) + "\n")
    # the split is made per patient from the labels: keep it by giving the splits explicitly
    split_of = {r.rel: r.split for r in cli.datamodule.records}
    rows = [out[0] + ",split"] + [f"{ln},{split_of[ln.split(',')[0]]}" for ln in out[1:]]
    (copy / "manifest.csv").write_text("\n".join(rows) + "\n")
    again = cli_main([a if not a.startswith("--data.root=") else f"--data.root={copy}" for a in args]
                     + [f"--run.root={tmp_path / 'runs'}"])
    first, second = _report(cli.run_dir), _report(again.run_dir)
    assert second["threshold"] == first["threshold"]
    assert second["counts"]["images_per_class"] != first["counts"]["images_per_class"]


def test_report_has_every_figure_with_its_interval_and_counts_and_no_patient(fitted, hand_data):
    cli, _ = fitted
    report = _report(cli.run_dir)
    assert {"auroc", "average_precision", "sensitivity", "specificity", "ppv", "npv", "acc", "balanced_acc",
            "f1"} <= set(report["metrics"])
    for figure in report["metrics"].values():
        if figure["ci_low"] is not None:
            assert figure["ci_low"] <= figure["estimate"] + 1e-9 and figure["estimate"] <= figure["ci_high"] + 1e-9
    test = cli.datamodule.split_records["test"]
    assert report["counts"]["images"] == len(test)
    assert report["counts"]["patients"] == len({r.patient_id for r in test})
    assert sum(report["counts"]["images_per_class"].values()) == len(test)
    assert report["ci"]["resampling_unit"] == "patient"
    text = (cli.run_dir / "test_report.json").read_text()
    patients = {r.patient_id for r in cli.datamodule.records}
    assert not [p for p in patients if p in text]
    # the same figures in the run's metrics (W&B summary and metrics.csv)
    rows = list(csv.DictReader(open(cli.run_dir / "metrics.csv")))
    logged = {k: float(v) for r in rows for k, v in r.items() if v and k.startswith("test/")}
    assert logged["test/sensitivity"] == pytest.approx(report["metrics"]["sensitivity"]["estimate"])
    assert logged["test/sensitivity_ci_low"] == pytest.approx(report["metrics"]["sensitivity"]["ci_low"])
    assert logged["test/threshold"] == pytest.approx(report["threshold"]["value"])


def test_checkpoints_carry_the_operating_point_chosen_for_their_weights(fitted):
    """The best checkpoint carries the point the test after fit used; every checkpoint carries
    the one chosen on validation with its own weights (a fresh choice through them agrees)."""
    from training.operating_point import OperatingPoint, choose_operating_point

    cli, _ = fitted
    best = torch.load(cli.checkpoint.best_model_path, map_location="cpu", weights_only=False)
    assert best["operating_point"] == cli.evaluation.point.to_dict()
    for path in (cli.checkpoint.best_model_path, cli.run_dir / "checkpoints" / "last.ckpt"):
        stored = OperatingPoint.from_dict(torch.load(path, map_location="cpu", weights_only=False)["operating_point"])
        out = cli.evaluation.collect_validation(cli.trainer, cli.model, cli.datamodule, str(path))
        again = choose_operating_point(out["logits"], out["labels"], cli.evaluation.options)
        assert stored.threshold.value == pytest.approx(again.threshold.value, rel=1e-5)


def test_test_and_predict_reuse_the_stored_threshold_and_test_reruns_with_another(fitted, tmp_path):
    cli, args = fitted
    best = cli.checkpoint.best_model_path
    stored = cli.evaluation.point.threshold.value
    base = [a for a in args[1:] if not a.startswith("--run.root=")] + [f"--run.root={tmp_path / 'runs'}"]
    test = cli_main(["test", *base, f"--ckpt_path={best}"])
    assert _report(test.run_dir)["threshold"]["value"] == pytest.approx(stored)
    fixed = cli_main(["test", *base, f"--ckpt_path={best}", "--eval.threshold=0.3"])
    assert _report(fixed.run_dir)["threshold"]["value"] == 0.3
    pred = cli_main(["predict", *base, f"--ckpt_path={best}"])
    rows = list(csv.DictReader(open(pred.run_dir / "predictions.csv")))
    assert rows and all(float(r["threshold"]) == pytest.approx(stored, rel=1e-5) for r in rows)
    for r in rows:
        assert r["predicted"] == ("abnormal" if float(r["prob_abnormal"]) >= stored else "normal")


def test_patient_level_section_with_mean_or_max(fitted, tmp_path):
    cli, args = fitted
    from evaluation import choose_patient_threshold

    report = _report(cli.run_dir)
    assert report["patient_level"]["aggregation"] == "max"  # two hands per patient: positive when any is
    # the patient-level operating point: chosen on the VALIDATION patients (max-aggregated) through
    # the best weights, the ones the test used
    point = cli.evaluation.point
    val = cli.evaluation.collect_validation(cli.trainer, cli.model, cli.datamodule, cli.checkpoint.best_model_path)
    ids = np.array([r.patient_id for r in cli.datamodule.records_of("val")], dtype=object)[val["index"]]
    expected = choose_patient_threshold("youden", point.probabilities(val["logits"])[:, 1], val["labels"], ids, "max")
    assert report["patient_level"]["threshold"]["value"] == pytest.approx(expected.value)
    assert report["patient_level"]["threshold_note"] == "rule youden chosen on validation patients"
    base = [a for a in args[1:] if not a.startswith("--run.root=")] + [f"--run.root={tmp_path / 'runs'}"]
    mean = cli_main(["test", *base, f"--ckpt_path={cli.checkpoint.best_model_path}",
                     "--eval.patient_aggregation=mean"])
    assert _report(mean.run_dir)["patient_level"]["aggregation"] == "mean"


def test_temperature_scaling_is_fitted_on_validation_before_the_threshold(fit_args):
    cli = cli_main(fit_args("configs/demo.yaml", *FAST, "--eval.temperature_scaling=true"))
    report = _report(cli.run_dir)
    assert report["temperature"]["fitted_on_validation"] is True
    temperature = report["temperature"]["value"]
    assert temperature != 1.0 and np.isfinite(temperature)
    assert report["validation_calibration"]["ece"] >= 0


@pytest.mark.parametrize(("value", "expected"), [
    ("sens:0.9", "eval.threshold"), ("sensitivity:1.5", "eval.threshold"), ("youdn", "eval.threshold"),
    ("2", "eval.threshold"),
])
def test_bad_threshold_spec_is_refused_naming_the_option(value, expected, fit_args, monkeypatch, capsys):
    import sys

    import cli

    monkeypatch.setattr(sys, "argv", ["cli.py", *fit_args("configs/demo.yaml", f"--eval.threshold={value}")])
    try:
        code = cli.main()
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and expected in err and value in err and "Traceback" not in err


def test_without_patient_ids_each_image_is_its_own_patient_and_the_report_says_so(fit_args, hand_data, tmp_path,
                                                                                  caplog):
    import shutil

    copy = tmp_path / "nopid"
    shutil.copytree(hand_data, copy)
    lines = (copy / "manifest.csv").read_text().splitlines()
    (copy / "manifest.csv").write_text("\n".join(",".join(line.split(",")[:2]) for line in lines) + "\n")
    args = [a if not a.startswith("--data.root=") else f"--data.root={copy}" for a in fit_args("configs/demo.yaml")]
    cli = cli_main([*args, *FAST, "--eval.patient_aggregation=max"])
    report = _report(cli.run_dir)
    assert report["ci"]["resampling_unit"] == "image (no patient ids)" and report["patient_level"] is None
    assert "no patient_id" in caplog.text


@pytest.mark.parametrize("logits, labels", [
    ([[0.0, 3.0]], [1]),                                   # one image, one class
    ([[2.0, -1.0], [0.5, 0.0], [3.0, 1.0]], [0, 0, 0]),    # one class
    ([[4.0, -4.0], [-4.0, 4.0], [3.0, -2.0]], [0, 1, 0]),  # perfectly separated: T runs to 0
], ids=["one image", "one class", "separated"])
def test_temperature_on_a_degenerate_validation_split_falls_back_and_the_report_says_so(logits, labels):
    from evaluation.calibration import fit_temperature
    from training.evaluate import choose_operating_point
    from training.options import EvalOptions
    from training.writers import test_report_of

    options = EvalOptions(threshold="0.5", temperature_scaling=True, bootstrap_resamples=100)
    assert fit_temperature(np.array(logits), np.array(labels)) in (pytest.approx(0.01, rel=1e-3),
                                                                    pytest.approx(100.0, rel=1e-3))  # the premise
    point = choose_operating_point(np.array(logits), np.array(labels), options)
    assert point.temperature == 1.0 and point.temperature_fallback
    probs = point.probabilities(np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 0.3]]))
    report = test_report_of(probs, np.array([1, 0, 0, 1]), None, ["normal", "abnormal"], point, options)
    assert report["temperature"]["fitted_on_validation"] is False and report["temperature"]["fallback"] is True
    assert "temperature" in report["temperature"]["reason"]
