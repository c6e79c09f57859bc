"""model_card.md (README "Model card"): every figure is test_report.json's, nothing names a file or
a patient, the limitations the run can state are stated, blanks are marked."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from evaluation import ThresholdChoice, build_report, subgroup_report
from evaluation.model_card import BLANK, CARD_FILE, model_card_text
from training.external import data_summary

NAMES = ["normal", "abnormal"]


@pytest.fixture
def run_dir(hand_data, tmp_path):
    """A run directory as a test leaves it: config.yaml and a test_report.json with the data summary."""
    import yaml

    from datamodules.datamodule import XrayDataModule

    dm = XrayDataModule(root=str(hand_data), image_size=32, num_workers=0)
    test = dm.split_records["test"]
    rng = np.random.default_rng(0)
    labels = np.array([dm.class_index[r.label] for r in test])
    p = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, len(labels)), 0.01, 0.99)
    probs, ids = np.c_[1 - p, p], np.array([r.patient_id for r in test], dtype=object)
    choice = ThresholdChoice(0.5, "youden", False, None, 0.8, 0.7)
    report = build_report(probs, labels, ids, NAMES, choice, n_resamples=200)
    sides = [{"side": r.rel.rsplit("_", 1)[1][0]} for r in test]  # a stand-in subgroup column (L/R)
    report["subgroups"] = subgroup_report(probs, labels, ids, NAMES, choice, sides, ["side"], n_resamples=200)
    report["temperature"] = {"value": 1.0, "fitted_on_validation": False, "fallback": True,
                             "reason": "validation holds one class"}
    report["data"] = data_summary(dm)
    report["training"] = {"models": 1, "best_epoch": [3]}
    out = tmp_path / "runs" / "demo" / "run1"
    out.mkdir(parents=True)
    (out / "test_report.json").write_text(json.dumps(report))
    config = {"model": {"backbone": "resnet18", "weights": str(tmp_path / "secret" / "w.pth"), "lr": 0.001},
              "data": {"root": str(hand_data), "batch_size": 8, "balancing": "none"},
              "trainer": {"max_epochs": 5}, "run": {"experiment": "demo", "root": str(tmp_path)}}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out, report, dm


def _card(out, sweep=None) -> str:
    return model_card_text((out / "test_report.json").read_text(), (out / "config.yaml").read_text(), "x", sweep)


def _table_rows(card: str) -> dict[str, list[str]]:
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[1] not in ("estimate", "---"):
            rows.setdefault(cells[0], cells)
    return rows


def test_every_figure_on_the_card_is_the_reports(run_dir):
    out, report, _ = run_dir
    card = _card(out)
    rows = _table_rows(card)
    figures = {**report["metrics"], "ece": report["calibration"]["ece"], "brier": report["calibration"]["brier"]}
    for name, iv in figures.items():
        est, ci, method = rows[name][1:]
        assert est == f"{iv['estimate']:.3f}"
        if iv["ci_low"] is None:  # no interval where the bootstrap collapses and none is exact (method says so)
            assert ci == "" and method.startswith("not-estimable")
        else:
            low, high = (float(x) for x in re.split("–", ci))
            assert (low, high) == (round(iv["ci_low"], 3), round(iv["ci_high"], 3))
        assert method.startswith(iv["method"])
    counts = report["data"]["splits"]["test"]
    assert f"| test | {counts['images']} | {counts['patients']} |" in card
    assert f"threshold {report['threshold']['value']:.4g}" in card


def test_card_names_no_path_no_file_no_patient(run_dir, hand_data, tmp_path):
    out, report, dm = run_dir
    card = _card(out)
    assert str(hand_data) not in card and str(tmp_path) not in card and "secret" not in card
    assert "a local weights file" in card
    for record in dm.records:
        assert record.patient_id not in card and record.rel not in card and record.path.name not in card


def test_card_states_what_the_run_knows_and_marks_the_rest(run_dir):
    out, _, _ = run_dir
    card = _card(out)
    assert "Temperature scaling was asked for but not applied" in card
    assert "Subgroup side=L" in card and "too small" in card  # a handful of test patients per side
    assert "No external validation" in card
    assert card.count(BLANK) >= 6 and "TRIPOD+AI" in card and "CLAIM" in card
    assert "not known to the run" in card  # no sweep given
    sweep = {"name": "lr", "method": "bayes", "trials": 12, "completed": 10, "metric": "val/auroc"}
    assert "bayes sweep `lr` of 12 trials (10 completed)" in _card(out, sweep)
    assert CARD_FILE == "model_card.md"


def test_sweeps_report_writes_the_best_runs_card_with_the_sweep_that_chose_it(tmp_path, capsys):
    from test_analysis import TRIALS, make_sweep_dir
    from test_report import _test_report_json

    from sweeps.main import main

    sweep_dir = make_sweep_dir(tmp_path)
    report = _test_report_json(sweep_dir / "runs" / "0004" / "test_report.json")
    assert main(["report", str(sweep_dir)]) == 0
    card = (sweep_dir / "runs" / "0004" / CARD_FILE).read_text()
    assert f"of {len(TRIALS)} trials" in card
    assert f"| auroc | {report['metrics']['auroc']['estimate']:.3f} |" in card
    # the runs' configs hold data and weights paths; the report's patients are MRN00000...
    assert "/data/ra_hand" not in card and "/secret" not in card and str(tmp_path) not in card and "MRN" not in card
    assert "wrote" in capsys.readouterr().out


def test_image_sizes_come_from_the_headers_alone(tmp_path):
    """PNG and DICOM (only Rows and Columns parsed: no patient tag is read for the card)."""
    from datamodules.synthetic import generate
    from training.external import header_size

    for fmt in ("png16", "dicom"):
        generate(tmp_path / fmt, count=2, size=(48, 40), fmt=fmt)
        assert {header_size(p) for p in (tmp_path / fmt / "images").iterdir()} == {(48, 40)}
    assert header_size(tmp_path / "missing.png") is None
    # a PACS export without suffixes is DICOM by its magic, as the data module reads it (the card
    # tested the suffix and left such images out of the sizes)
    bare = next((tmp_path / "dicom" / "images").iterdir())
    assert header_size(bare.rename(bare.with_suffix(""))) == (48, 40)


def test_external_section_shows_each_figure_and_undefined_ones_as_na(run_dir):
    import copy

    from evaluation.external import compare_reports

    out, report, _ = run_dir
    external = copy.deepcopy(report)
    external["metrics"]["ppv"] = {"estimate": None, "ci_low": None, "ci_high": None, "method": "bca"}
    report["external"] = [{"name": "external", "report": external, "comparison": compare_reports(report, external)}]
    (out / "test_report.json").write_text(json.dumps(report))
    card = _card(out)
    auroc = report["metrics"]["auroc"]
    assert f"| auroc | {auroc['estimate']:.3f} ({auroc['ci_low']:.3f}–{auroc['ci_high']:.3f}) |" in card
    assert "| ppv |" in card and "| n/a | n/a | n/a |" in card
