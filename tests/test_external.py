"""External validation (README "External validation"): a second site's data scored whole at site A's
operating point, side by side with the internal test, and the rule that says what changed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evaluation import build_report
from evaluation.binomial import clopper_pearson
from evaluation.external import compare_reports, format_comparison, mover_difference
from training.cli import cli_main

FAST = ["--eval.bootstrap_resamples=200"]


def test_mover_difference_of_two_intervals():
    internal = {"estimate": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    external = {"estimate": 0.6, "ci_low": 0.4, "ci_high": 0.75}
    diff, low, high = mover_difference(internal, external)
    assert diff == pytest.approx(-0.2)
    assert low == pytest.approx(-0.2 - np.hypot(0.2, 0.1))  # external's lower arm, internal's upper arm
    assert high == pytest.approx(-0.2 + np.hypot(0.15, 0.1))
    assert mover_difference(internal, {"estimate": None, "ci_low": None, "ci_high": None}) is None


def test_the_change_rule_holds_its_level_where_outside_the_internal_interval_does_not():
    """Same true sensitivity (0.85) at both sites, 60 positives inside and 20 outside: MOVER on the
    exact intervals flags a change in <= 5% of data sets; "external estimate outside the internal
    interval" (it ignores the external set's own noise) in far more."""
    rng = np.random.default_rng(0)
    flagged_mover = flagged_naive = 0
    reps = 400
    for _ in range(reps):
        k_i, k_e = rng.binomial(60, 0.85), rng.binomial(20, 0.85)
        iv_i = dict(zip(("ci_low", "ci_high"), clopper_pearson(k_i, 60)), estimate=k_i / 60)
        iv_e = dict(zip(("ci_low", "ci_high"), clopper_pearson(k_e, 20)), estimate=k_e / 20)
        _, low, high = mover_difference(iv_i, iv_e)
        flagged_mover += not low <= 0 <= high
        flagged_naive += not iv_i["ci_low"] <= iv_e["estimate"] <= iv_i["ci_high"]
    assert flagged_mover / reps <= 0.05
    assert flagged_naive / reps >= 0.2


def _scores(rng, n, shift):
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + (2.0 - shift) * (labels - 0.5) * 2)))
    return np.c_[1 - p, p], labels


@pytest.mark.parametrize("shift, changed", [(0.0, False), (1.8, True)])
def test_compare_reports_flags_a_lost_discrimination_only(shift, changed):
    rng = np.random.default_rng(1)
    (pi, li), (pe, le) = _scores(rng, 200, 0.0), _scores(rng, 200, shift)
    names = ["normal", "abnormal"]
    internal = build_report(pi, li, None, names, None, n_resamples=200)
    external = build_report(pe, le, None, names, None, n_resamples=200)
    comparison = compare_reports(internal, external)
    auroc = next(r for r in comparison["image_level"] if r["figure"] == "auroc")
    assert auroc["changed"] is changed
    assert "auroc" in format_comparison(comparison)


def _plan(monkeypatch, logits, labels, point, options):
    """A TestPlan over made-up external records whose model outputs are `logits` (no training)."""
    from types import SimpleNamespace

    import training.external as external
    from datamodules.records import Record

    records = [Record(f"x/{i}.png", f"{i}.png", ["normal", "abnormal"][y], f"p{i // 2}", "test")
               for i, y in enumerate(labels)]
    monkeypatch.setattr(external, "_predict", lambda cli, data, ckpt: (np.asarray(logits), np.arange(len(labels))))
    cli = SimpleNamespace(datamodule=SimpleNamespace(class_index={"normal": 0, "abnormal": 1}),
                          model=SimpleNamespace(class_names=["normal", "abnormal"]))
    plan = external.TestPlan.__new__(external.TestPlan)
    plan.cli, plan.options, plan.point, plan.records, plan.checkpoints = cli, options, point, records, [None]
    return plan


def test_external_scoring_uses_the_given_operating_point_not_one_from_its_own_labels(monkeypatch):
    """Fast twin of the end-to-end test: the external labels flipped leave threshold and temperature
    as site A chose them, while the figures follow the labels (so the labels are read)."""
    from evaluation import ThresholdChoice
    from training.operating_point import OperatingPoint
    from training.options import EvalOptions

    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    logits = np.c_[np.zeros(40), rng.normal(0, 1, 40) + 1.5 * labels]
    point = OperatingPoint(ThresholdChoice(0.9, "youden", False, None, 0.8, 0.7), temperature=2.0,
                           temperature_scaling=True)
    options = EvalOptions(bootstrap_resamples=200)
    reports = [_plan(monkeypatch, logits, y, point, options).external_report() for y in (labels, 1 - labels)]
    for report in reports:
        assert report["threshold"]["value"] == 0.9 and report["threshold"]["rule"] == "youden"
        assert report["temperature"]["value"] == 2.0
        assert report["split"] == "external" and report["counts"]["patients"] == 20
    assert reports[0]["metrics"]["auroc"]["estimate"] == pytest.approx(1 - reports[1]["metrics"]["auroc"]["estimate"])


# ---- end to end: site A fitted once, site B scored whole -----------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, hand_data):
    from conftest import TINY

    root = tmp_path_factory.mktemp("fit")
    args = ["--config", "configs/demo.yaml", f"--data.root={hand_data}", "--demo.body_part=null",
            f"--run.root={root / 'runs'}", *TINY, *FAST]
    cli = cli_main(["fit", *args])
    return cli, args


@pytest.fixture(scope="module")
def site_b(tmp_path_factory):
    """Another site: other patients, fewer disease signs, images darker and noisier (another scanner)."""
    from PIL import Image

    from datamodules.synthetic import generate

    root = tmp_path_factory.mktemp("site_b") / "b"
    generate(root, body_part="hand", count=30, size=(64, 64), seed=11, severity=0.7)
    rng = np.random.default_rng(0)
    for png in (root / "images").glob("*.png"):
        img = np.asarray(Image.open(png), dtype=np.float64) / 65535
        img = np.clip(img**1.6 + rng.normal(0, 0.03, img.shape), 0, 1)
        Image.fromarray((img * 65535).astype(np.uint16)).save(png)
    return root


def _flipped(site, tmp_path):
    rows = list(csv.DictReader(open(site / "manifest.csv")))
    out = tmp_path / "flipped.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "path": str(site / r["path"]),
                             "label": "normal" if r["label"] == "abnormal" else "abnormal"})
    return out


@pytest.mark.slow
def test_external_site_is_scored_at_site_a_operating_point_whatever_its_labels(fitted, site_b, tmp_path):
    """Flipping every external label changes the external figures, never the threshold or the
    temperature: a threshold chosen on the external data would follow its labels."""
    cli, args = fitted
    best = cli.checkpoint.best_model_path
    stored = cli.evaluation.point
    base = [a for a in args if not a.startswith("--run.root=")] + [f"--run.root={tmp_path / 'runs'}"]
    reports, cards = [], []
    for external in (site_b, _flipped(site_b, tmp_path)):
        test = cli_main(["test", *base, f"--ckpt_path={best}", f"--eval.external={external}",
                         "--data.allow_outside_root=true"])
        reports.append(json.loads((test.run_dir / "test_report.json").read_text()))
        cards.append((test.run_dir / "model_card.md").read_text())
    for report in reports:
        site = report["external"][0]
        assert site["report"]["threshold"] == report["threshold"] == stored.threshold.to_dict()
        assert site["report"]["temperature"]["value"] == stored.temperature
        assert site["report"]["counts"]["images"] == 30  # the whole set: no split made
        assert {r["figure"] for r in site["comparison"]["image_level"]} >= {"auroc", "sensitivity", "ece"}
    auroc = [r["external"][0]["report"]["metrics"]["auroc"]["estimate"] for r in reports]
    assert auroc[0] == pytest.approx(1 - auroc[1], abs=1e-9)  # the labels were read: figures flip
    for card in cards:  # the card shows the external site by its label, never by its path
        assert "External test `external`" in card and "| auroc |" in card
        assert str(site_b) not in card
        assert str(tmp_path) not in card
        assert ".png" not in card and "images/P" not in card


@pytest.mark.slow
def test_another_data_root_alone_is_refused_not_split(fitted, site_b, tmp_path, capsys):
    import sys

    from training.program import main

    cli, args = fitted
    base = [a for a in args if not a.startswith(("--run.root=", "--data.root="))]
    argv = ["cli.py", "test", *base, f"--data.root={site_b}", f"--run.root={tmp_path / 'runs'}",
            f"--ckpt_path={cli.checkpoint.best_model_path}"]
    old, sys.argv = sys.argv, argv
    try:
        assert main() == 2
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert "not the data the checkpoint was trained on" in err and "--eval.external" in err


def test_check_same_data_refuses_another_root_while_the_trained_one_exists(tmp_path):
    """`test --data.root=<site B>` would split site B and test a part of it: refused; data that
    moved (the old root gone) is accepted."""
    from types import SimpleNamespace

    import torch

    from datamodules.records import DataError
    from training.external import check_same_data

    site_a, site_b = tmp_path / "a", tmp_path / "b"
    site_a.mkdir(), site_b.mkdir()
    ckpt = tmp_path / "m.ckpt"
    torch.save({"datamodule_hyper_parameters": {"root": str(site_a)}}, ckpt)
    check_same_data(str(ckpt), SimpleNamespace(root=site_a))
    with pytest.raises(DataError, match="eval.external"):
        check_same_data(str(ckpt), SimpleNamespace(root=site_b))
    site_a.rmdir()  # moved: the same data under another root
    check_same_data(str(ckpt), SimpleNamespace(root=site_b))


def test_an_external_set_holding_the_models_own_images_is_refused(tmp_path):
    """`--eval.external=<data.root>` (or a manifest naming site A's files, through a symlink)
    would score the training data as if it came from another site: refused with counts per split,
    no file name; another site's images pass."""
    from datamodules.records import DataError, Record
    from training.external import check_not_internal

    for name in ("a1.png", "a2.png", "a3.png", "b1.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "a2.png")
    site_a = [Record(tmp_path / n, n, "normal", n, split)
              for n, split in (("a1.png", "train"), ("a2.png", "val"), ("a3.png", "test"))]

    def external(*names):
        return [Record(tmp_path / n, n, "normal", n, "test") for n in names]

    check_not_internal(external("b1.png"), site_a, "site_b")
    with pytest.raises(DataError) as e:
        check_not_internal(external("a1.png", "link.png", "b1.png"), site_a, "site_b")
    assert "holds 2 of this model's own images (1 train, 1 val)" in str(e.value)
    assert "a1.png" not in str(e.value) and "link" not in str(e.value)


def test_fit_with_a_bad_external_set_fails_before_training(fit_args, hand_data, tmp_path):
    """`fit --eval.external=...` checks the set when the run starts: giving the training data again
    used to fail only after the whole training, the run then counted failed."""
    from datamodules.records import DataError

    with pytest.raises(DataError, match="this model's own images"):
        cli_main(fit_args("configs/demo.yaml", f"--eval.external={hand_data}"))
    assert not list((tmp_path / "runs").rglob("*.ckpt")) and not list((tmp_path / "runs").rglob("sweep_history.jsonl"))


@pytest.mark.slow
def test_cv_run_external_test_is_the_fold_ensemble_at_its_out_of_fold_point(fit_args, site_b, tmp_path):
    cv = cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--trainer.devices=1", *FAST))
    saved = json.loads((cv.run_dir / "cv.json").read_text())
    internal = json.loads((cv.run_dir / "test_report.json").read_text())
    test = cli_main([*fit_args("configs/demo.yaml", *FAST, subcommand="test"), f"--cv.run_dir={cv.run_dir}",
                     f"--eval.external={site_b}"])
    report = json.loads((test.run_dir / "test_report.json").read_text())
    assert report["metrics"] == internal["metrics"]  # the CV run's own ensemble test, not a new one
    site = report["external"][0]["report"]
    assert site["threshold"]["value"] == saved["operating_point"]["threshold"]["value"]
    assert site["counts"]["images"] == 30 and report["training"]["models"] == 2
    assert (test.run_dir / "model_card.md").is_file()


def test_a_missing_external_set_is_refused_when_the_command_is_parsed(tmp_path):
    """Before any training: `fit --eval.external=...` scores the external set only after the fit."""
    from training.options import EvalOptions

    with pytest.raises(ValueError, match="eval.external=.*does not exist"):
        EvalOptions(external=str(tmp_path / "nowhere"))
    assert EvalOptions(external=str(tmp_path)).external == str(tmp_path)
