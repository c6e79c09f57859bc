"""`python -m sweeps report`: one offline HTML page with plotly.js inlined once."""

from __future__ import annotations

import re

from test_analysis import TRIALS, make_sweep_dir

from sweeps.analysis.report import scrub, write_report

PLOTLY_JS_BANNER = re.compile(r"\* plotly\.js v\d")


def _check_offline(text: str) -> None:
    assert len(PLOTLY_JS_BANNER.findall(text)) == 1  # plotly.js inline, exactly once
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from anywhere
    assert "cdn.plot.ly/plotly" not in text


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


def test_scrub_keeps_metric_names():
    assert scrub("val/auroc is NaN at /data/x/y.png") == "val/auroc is NaN at <path>"
    assert scrub("cannot read data/ra_hand/p1.png") == "cannot read <path>"
