"""For whom the model works: test figures per subgroup (eval.subgroups) with patient-level
intervals and counts, small groups marked, and the subgroup columns' values written nowhere
but as group labels in test_report.json."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from evaluation import ThresholdChoice, build_report
from evaluation.binomial import clopper_pearson
from evaluation.report import format_subgroups
from evaluation.subgroups import (
    MIN_PATIENTS_PER_CLASS,
    check_columns,
    columns_of,
    parse_subgroups,
    subgroup_report,
)

NAMES = ["normal", "abnormal"]
HALF = ThresholdChoice(0.5, "0.5")


def _cohort(n_patients: int, images_each: int, seed: int = 0):
    """Patients whose images are identical copies (same probability, same label)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_patients) % 2
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, n_patients), 0.01, 0.99)
    ids = np.repeat(np.arange(n_patients), images_each).astype(str)
    probs = np.repeat(np.stack([1 - p, p], axis=1), images_each, axis=0)
    return probs, np.repeat(y, images_each), ids


def _width(iv: dict) -> float:
    return iv["ci_high"] - iv["ci_low"]


def test_subgroup_intervals_resample_patients_not_images():
    """20 identical images per patient: resampling images would act as if there were 20 times as
    many patients and give an interval about sqrt(20) ~ 4.5 times too narrow."""
    probs, labels, ids = _cohort(24, 20)
    columns = [{"site": "A" if int(i) < 16 else "B"} for i in ids]
    section = subgroup_report(probs, labels, ids, NAMES, HALF, columns, ["site"], n_resamples=400)
    site_a = section["by"][0]["groups"][0]
    assert site_a["group"] == "A" and site_a["counts"] == {
        "images": 320, "patients": 16, "images_per_class": {"normal": 160, "abnormal": 160},
        "patients_per_class": {"normal": 8, "abnormal": 8}}
    keep = np.array([int(i) < 16 for i in ids])
    as_images = build_report(probs[keep], labels[keep], None, NAMES, HALF, n_resamples=400)
    for name in ("auroc", "sensitivity", "specificity"):
        assert _width(site_a["metrics"][name]) > 2.5 * _width(as_images["metrics"][name]), name
    # and it is exactly the whole-split report of those images, patients as the unit
    same = build_report(probs[keep], labels[keep], ids[keep], NAMES, HALF, n_resamples=400)
    assert site_a["metrics"] == same["metrics"]


def test_counts_bands_and_missing_values():
    probs, labels, ids = _cohort(12, 2)
    ages = ["17.9", "18", "64.99", "65", "", "n/a"] * 4
    columns = [{"age": a, "sex": "F" if i % 3 else ""} for i, a in enumerate(ages)]
    section = subgroup_report(probs, labels, ids, NAMES, HALF, columns, ["age:18,65", "sex"], n_resamples=100)
    age, sex = section["by"]
    assert age["spec"] == "age:18,65"
    groups = {g["group"]: g["counts"] for g in age["groups"]}
    assert list(groups) == ["<18", "[18, 65)", ">=65", "missing"]  # band order, missing last
    assert [c["images"] for c in groups.values()] == [4, 8, 4, 8]  # a cut point starts the upper band
    assert groups["<18"]["patients"] == 4  # images 0, 6, 12, 18: patients 0, 3, 6, 9
    assert groups["<18"]["patients_per_class"] == {"normal": 2, "abnormal": 2}
    assert {g["group"]: g["counts"]["images"] for g in sex["groups"]} == {"F": 16, "missing": 8}
    assert sum(g["counts"]["images"] for g in sex["groups"]) == len(labels)


def test_small_group_rule_and_its_line():
    # the rule's reason: n of n found still reaches below a coin flip for n < 6, not for 6
    assert clopper_pearson(MIN_PATIENTS_PER_CLASS - 1, MIN_PATIENTS_PER_CLASS - 1)[0] < 0.5
    assert clopper_pearson(MIN_PATIENTS_PER_CLASS, MIN_PATIENTS_PER_CLASS)[0] > 0.5
    probs, labels, ids = _cohort(2 * (2 * MIN_PATIENTS_PER_CLASS - 1), 1)
    # group "big": 6 normal + 6 abnormal patients; "small": 5 + 5
    columns = [{"site": "big" if i < 2 * MIN_PATIENTS_PER_CLASS else "small"} for i in range(len(labels))]
    section = subgroup_report(probs, labels, ids, NAMES, HALF, columns, ["site"], n_resamples=100)
    big, small = section["by"][0]["groups"]
    assert not big["too_small"] and big["note"] is None
    assert small["too_small"] and "5 normal and 5 abnormal patient(s)" in small["note"]
    text = format_subgroups(section)
    assert "site=small" in text and "too small for its intervals to mean anything" in text
    assert text.count("too small") == 1


@pytest.mark.parametrize("bad", ["", ":18", "age:", "age:65,18", "age:x", "age:18,18", "age:nan"])
def test_bad_specs_name_the_option(bad):
    with pytest.raises(ValueError, match="eval.subgroups"):
        parse_subgroups([bad])


def test_unknown_column_and_identifier_column_are_refused_before_training():
    class R:
        def __init__(self, **columns):
            self.columns = tuple(columns.items())

    records = [R(sex="F", mrn=f"MRN{i}") for i in range(30)]
    with pytest.raises(ValueError, match=r"eval.subgroups: column 'site' is not in m.csv; its extra columns: mrn, sex"):
        check_columns(["site"], records, "m.csv")
    with pytest.raises(ValueError, match="'mrn' of m.csv has 30 distinct values"):
        check_columns(["mrn"], records, "m.csv")
    check_columns(["sex", "mrn:0,10"], records, "m.csv")  # bands of anything are few
    assert columns_of(records, [2])[0] == {"sex": "F", "mrn": "MRN2"}


def test_multiclass_groups_and_a_one_image_group():
    rng = np.random.default_rng(1)
    probs, labels = rng.dirichlet([1, 1, 1], 60), rng.integers(0, 3, 60)
    columns = [{"site": "solo" if i == 0 else "A"} for i in range(60)]
    with np.errstate(all="raise"):
        section = subgroup_report(probs, labels, None, ["a", "b", "c"], None, columns, ["site"], n_resamples=100)
    a, solo = section["by"][0]["groups"]
    assert a["metrics"]["auroc"]["ci_low"] is not None and a["counts"]["images"] == 59
    assert solo["too_small"] and solo["counts"]["images"] == 1
    json.dumps(section, allow_nan=False)


def test_html_report_has_a_forest_plot_with_every_group():
    from sweeps.analysis.subgroups_html import count_rows, forest_figure, subgroups_html

    probs, labels, ids = _cohort(36, 2)
    columns = [{"sex": "F" if int(i) % 3 else "M", "site": "A" if int(i) else "B"} for i in ids]
    report = build_report(probs, labels, ids, NAMES, HALF, n_resamples=100)
    report["subgroups"] = subgroup_report(probs, labels, ids, NAMES, HALF, columns, ["sex", "site"], n_resamples=100)
    report = json.loads(json.dumps(report))
    fig = forest_figure(report)
    assert [a.text for a in fig.layout.annotations] == ["auroc", "sensitivity", "specificity"]
    drawn = {y for trace in fig.data for y in trace.y}
    assert drawn == {"sex: F (24 pt)", "sex: M (12 pt)", "site: A (35 pt)", "site: B (1 pt)"}
    small = [t for t in fig.data if t.name == "too small to compare"]
    assert small and all(set(t.y) == {"site: B (1 pt)"} for t in small)
    assert count_rows(report)[1] == ["sex: F", 48, 24, 12, 12, ""]
    page = subgroups_html(report, lambda f: "<figure/>", lambda rows: f"<table>{len(rows)}</table>")
    assert "<figure/>" in page and "<table>5</table>" in page and "fewer than 6 patients" in page
    assert subgroups_html({k: v for k, v in report.items() if k != "subgroups"}, str, str) == ""


def _with_columns(src, dst):
    """The demo data with subgroup columns: site (asked for), age (asked for in bands) and mrn
    (not asked for); the ages are odd decimals so that a leak is findable."""
    shutil.copytree(src, dst)
    rows = list(csv.DictReader(open(dst / "manifest.csv")))
    for i, row in enumerate(rows):
        row.update(site="SiteAlpha" if i % 2 else "SiteBeta", age=f"{20 + i}.{137 + i}", mrn=f"MRN9{i:04d}77")
    with open(dst / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_fit_writes_subgroups_and_no_column_value_elsewhere(fit_args, hand_data, tmp_path):
    from training.cli import cli_main

    rows = _with_columns(hand_data, tmp_path / "data")
    cli = cli_main([*fit_args("configs/demo.yaml"), f"--data.root={tmp_path / 'data'}", "--trainer.max_epochs=1",
                    "--eval.bootstrap_resamples=100", "--trainer.limit_test_batches=1.0",
                    "--eval.subgroups=[site, 'age:30,40']"])
    report = json.loads((cli.run_dir / "test_report.json").read_text())
    test = cli.datamodule.split_records["test"]
    by = {c["column"]: {g["group"]: g["counts"]["images"] for g in c["groups"]} for c in report["subgroups"]["by"]}
    sites = [dict(r.columns)["site"] for r in test]
    assert by["site"] == {s: sites.count(s) for s in sorted(set(sites))}
    assert sum(by["age"].values()) == len(test) and set(by["age"]) <= {"<30", "[30, 40)", ">=40"}
    assert "SiteAlpha" not in repr(test[0])  # a record's repr (in any log line) carries no column
    ages, mrns = [r["age"] for r in rows], [r["mrn"] for r in rows]
    found = []
    for path in cli.run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {v}" for v in ages + mrns if v.encode() in data]
            if path.name not in ("test_report.json", "model_card.md"):  # group labels beside counts only
                found += [f"{path.name}: site" for v in ("SiteAlpha", "SiteBeta") if v.encode() in data]
    assert not found


def test_unknown_column_is_one_line_naming_the_manifest(fit_args, hand_data, tmp_path, monkeypatch, capsys):
    import sys

    import cli

    _with_columns(hand_data, tmp_path / "data")
    monkeypatch.setattr(sys, "argv", ["cli.py", *fit_args("configs/demo.yaml"), f"--data.root={tmp_path / 'data'}",
                                      "--eval.subgroups=[sex]"])
    try:
        code = cli.main()
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    line = next(x for x in err.splitlines() if "eval.subgroups" in x)
    assert "'sex'" in line and str(tmp_path / "data" / "manifest.csv") in line and "age, mrn, site" in line


def test_bad_spec_is_refused_at_parse_time(fit_args, monkeypatch, capsys):
    import sys

    import cli

    monkeypatch.setattr(sys, "argv", ["cli.py", *fit_args("configs/demo.yaml"), "--eval.subgroups=['age:65,18']"])
    try:
        code = cli.main()
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "eval.subgroups" in err and "age:65,18" in err and "Traceback" not in err
