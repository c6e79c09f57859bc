"""`python -m sweeps report`: one offline HTML page with plotly.js inlined once."""

from __future__ import annotations

import re

from test_analysis import TRIALS, make_sweep_dir

from sweeps.analysis.report import write_report
from sweeps.text import mask_file_names

PLOTLY_JS_BANNER = re.compile(r"\* plotly\.js v\d")


def _check_offline(text: str) -> None:
    assert len(PLOTLY_JS_BANNER.findall(text)) == 1  # plotly.js inline, exactly once
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from anywhere
    assert "cdn.plot.ly/plotly" not in text
    first_figure = text.find('class="plotly-graph-div"')
    if first_figure >= 0:  # a figure placed before plotly.js would stay blank in the browser
        assert PLOTLY_JS_BANNER.search(text).start() < first_figure


def test_report(tmp_path):
    sweep_dir = make_sweep_dir(tmp_path)
    path = write_report(sweep_dir)
    assert path == sweep_dir / "report.html"
    text = path.read_text()
    _check_offline(text)
    for section in ("summary", "history", "parallel", "importance", "curves", "runs"):
        assert f'<section id="{section}">' in text
    # plotly writes "/" in titles as \u002f
    for title in ("Optimization history", "Parameter importance for val\\u002fauroc", "Learning curves"):
        assert title in text
    assert text.count('class="plotly-graph-div"') == 4
    assert "0002 (stopped)" in text and "0002 stopped" in text  # dashed curve + its x marker
    assert '"dash":"dash"' in text
    assert "Runs that did not complete" in text and "0003: failed" in text
    # privacy: no file system paths, not even the ones in a failure reason or a run's config
    assert "/data/ra_hand" not in text and "/secret" not in text and str(tmp_path) not in text
    assert "&lt;path&gt;" in text
    assert "Best run 0004" in text


def test_report_one_completed_run(tmp_path):
    sweep_dir = make_sweep_dir(tmp_path, trials=[TRIALS[0], TRIALS[3]])
    out = tmp_path / "r.html"
    assert write_report(sweep_dir, out=str(out)) == out
    text = out.read_text()
    _check_offline(text)
    assert "Parameter importance needs at least 2 completed runs; this sweep has 1" in text
    assert "Best run 0000" in text


def test_report_no_completed_run(tmp_path):
    """Still a page (it can be regenerated while a sweep runs), saying what it waits for."""
    sweep_dir = make_sweep_dir(tmp_path, trials=[TRIALS[3], TRIALS[6]])
    text = write_report(sweep_dir).read_text()
    _check_offline(text)  # the learning curves still draw
    assert "No completed run yet" in text and "needs at least 2 completed runs" in text


def test_report_empty_sweep(tmp_path):
    text = write_report(make_sweep_dir(tmp_path, trials=[])).read_text()
    assert "No runs yet" in text and "plotly.js" not in text


def test_report_errors(tmp_path, capsys):
    from sweeps.main import main

    assert main(["report", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    sweep_dir = make_sweep_dir(tmp_path)
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert str(tmp_path / "no") in capsys.readouterr().err


def test_the_path_mask_keeps_metric_names():
    assert mask_file_names("val/auroc is NaN at /data/x/y.png") == "val/auroc is NaN at <path>"
    assert mask_file_names("cannot read data/ra_hand/p1.png") == "cannot read <path>"


def test_a_patient_named_file_in_a_failure_reason_stays_off_the_report(tmp_path):
    """The report masked paths with a copy of its own that let a quoted file name without a
    directory through ('Doe Jane 1970.png' is a patient's name); it uses the runner's mask now."""
    failed = (*TRIALS[3][:3], "exit code 1: cannot identify image file 'Doe Jane 1970-01-01 MRN778899.png'")
    text = write_report(make_sweep_dir(tmp_path, trials=[TRIALS[0], failed])).read_text()
    assert "0001: failed" in text and "cannot identify image file" in text
    assert "Doe Jane" not in text and "MRN778899" not in text


def _test_report_json(path) -> dict:
    """A real report (evaluation.build_report) on synthetic scores of 40 patients, 2 images each."""
    import json

    import numpy as np

    from evaluation import build_report, choose_threshold

    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 40), 2)
    scores = 1 / (1 + np.exp(-(2.0 * labels - 1 + rng.normal(0, 1, len(labels)))))
    probs = np.stack([1 - scores, scores], axis=1)
    choice = choose_threshold("youden", scores, labels)
    report = build_report(probs, labels, np.repeat([f"MRN{i:05d}" for i in range(40)], 2), ["normal", "abnormal"],
                          choice, n_resamples=200)
    path.write_text(json.dumps(report))
    return report


def test_report_shows_the_best_runs_test_figures_with_their_intervals(tmp_path):
    sweep_dir = make_sweep_dir(tmp_path)
    report = _test_report_json(sweep_dir / "runs" / "0004" / "test_report.json")
    text = write_report(sweep_dir).read_text()
    _check_offline(text)
    assert '<section id="test">' in text and "Test figures of the best run (0004)" in text
    sens = report["metrics"]["sensitivity"]
    assert f"{sens['ci_low']:.3f} – {sens['ci_high']:.3f}" in text  # the CI table
    assert "patient: auroc" in text  # the patient-level rows
    assert "ROC curve (test)" in text and "operating point" in text and "Reliability diagram (test)" in text
    assert "Confusion matrix at the threshold" in text
    assert text.count('class="plotly-graph-div"') == 6
    assert "MRN" not in text  # counts only, never a patient
    assert "80 images of 40 patients" in text


def test_best_prints_the_best_runs_test_figures(tmp_path, capsys):
    from sweeps.analysis import show_best

    sweep_dir = make_sweep_dir(tmp_path)
    report = _test_report_json(sweep_dir / "runs" / "0004" / "test_report.json")
    assert show_best(str(sweep_dir)) == 0
    out = capsys.readouterr().out
    sens = report["metrics"]["sensitivity"]
    assert "test figures of the best run" in out
    assert f"({sens['ci_low']:.3f}-{sens['ci_high']:.3f})" in out and "MRN" not in out


def _jpeg_base64() -> str:
    import base64
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(out, format="JPEG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def test_report_shows_the_best_runs_overlays_and_only_what_is_checked(tmp_path):
    """explanations/test_overlays.json as the run writes it (models/teaching.py), plus entries
    that are not ours: a file name where a class belongs, text where a JPEG belongs, an unknown
    kind. Only the checked thumbnails reach the page, and a line counts the rest."""
    import json

    from rundir.layout import TEST_OVERLAYS

    sweep_dir = make_sweep_dir(tmp_path)
    _test_report_json(sweep_dir / "runs" / "0004" / "test_report.json")
    text = write_report(sweep_dir).read_text()
    assert '<section id="overlays">' in text and "not run with eval.explain=true" in text
    good = {"kind": "false_positive", "probability": 0.91, "true": "normal", "predicted": "abnormal",
            "jpeg": _jpeg_base64()}
    bad = [{**good, "true": "images/P0001_L.png"}, {**good, "jpeg": "aW1hZ2VzL1AwMDAxX0wucG5n"},
           {**good, "kind": "P0001"}, "images/P0001_L.png"]
    path = sweep_dir / "runs" / "0004" / TEST_OVERLAYS
    path.parent.mkdir()
    path.write_text(json.dumps({"images": [good, *bad], "ensemble_folds": 5}))
    text = write_report(sweep_dir).read_text()
    assert text.count('src="data:image/jpeg;base64,') == 1 and good["jpeg"] in text
    assert "P(abnormal) = 0.910" in text and "true normal, predicted abnormal" in text
    assert "mean of the 5 folds' maps" in text and "4 entries of" in text
    assert "P0001" not in text and "aW1hZ2VzL1AwMDAxX0wucG5n" not in text
    path.write_text("{not json")
    assert "is damaged" in write_report(sweep_dir).read_text()
