"""W&B's hyperband rule (sweeps/hyperband_stopping.py) against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from sweeps.hyperband import hyperband_stop, thresholds


def stopped(histories, running, et, goal="minimize"):
    return sorted(d.run for d in hyperband_stop(histories, running, et, goal))


def test_threshold_index_is_int_of_len_over_eta():
    # min_iter=1, eta=2: band 2 values [5, 5.5, 6, 7] -> sorted[int(4 / 2)] = 6
    assert thresholds([[1, 5], [1, 5.5], [1, 6], [1, 7]], [2], 2) == {2: 6}
    assert thresholds([[1]], [2], 2) == {2: math.inf}  # nobody reached the band


def test_strict_uses_value_at_band_lenient_uses_best():
    et = {"type": "hyperband", "min_iter": 1, "eta": 2}
    others = {"a": [1, 5], "b": [1, 5.5], "c": [1, 6]}
    # band 1 values [1, 1, 1, 3] -> threshold sorted[2] = 1; run r (3) is worse -> stop at band 2 too
    histories = {**others, "r": [3, 7]}
    # band 2 values [5, 5.5, 6, 7] -> threshold 6; strict: 7 > 6 -> stop; lenient: min 3 <= 6 -> keep
    decisions = hyperband_stop(histories, ["r"], et, "minimize")
    assert [(d.run, d.band, d.value, d.threshold) for d in decisions] == [("r", 2, 7, 6)]
    assert stopped(histories, ["r"], dict(et, strict=False)) == []


def test_maximize_negates():
    et = {"type": "hyperband", "min_iter": 1, "eta": 2}
    histories = {"a": [0.9], "b": [0.8], "c": [0.5], "d": [0.4]}
    # negated band 1: [-0.9, -0.8, -0.5, -0.4] -> threshold sorted[2] = -0.5: d (-0.4) stops, c stays
    assert stopped(histories, ["a", "b", "c", "d"], et, "maximize") == ["d"]
    decision = hyperband_stop(histories, ["d"], et, "maximize")[0]
    assert decision.value == 0.4 and decision.threshold == 0.5
    assert "below bracket threshold 0.5" in decision.reason("val/auroc", "maximize")


def test_eta_3_and_finished_runs_count():
    et = {"type": "hyperband", "min_iter": 2, "eta": 3}  # bands 2, 6, 18, ...
    histories = {"f1": [9, 1, 1, 1, 1, 1], "f2": [9, 2], "f3": [9, 3], "r1": [9, 2.5, 2.4], "r2": [9, 1.5]}
    # band 2: [1, 2, 3, 2.5, 1.5] sorted [1, 1.5, 2, 2.5, 3][int(5 / 3) = 1] = 1.5
    # r1 at band 2 (3 values, band 6 not reached): 2.5 > 1.5 -> stop; r2: 1.5 not > 1.5 -> keep
    assert stopped(histories, ["r1", "r2"], et) == ["r1"]
    # only running runs are ever stopped
    assert stopped(histories, [], et) == []


def test_max_iter_and_s_bands():
    et = {"type": "hyperband", "max_iter": 9, "s": 2, "eta": 3}  # bands: 9/3 = 3, 3/3 = 1 -> [1, 3]
    histories = {"a": [1, 1, 1], "b": [2, 2, 2], "c": [3, 3, 3], "r": [1, 9]}
    # r has 2 values: judged at band 1 only; band 1 values [1, 2, 3, 1] -> sorted[int(4/3)=1] = 1 -> keep
    assert stopped(histories, ["r"], et) == []
    histories["r"] = [1, 9, 9]  # band 3: [1, 2, 3, 9] -> threshold sorted[1] = 2; 9 > 2 -> stop
    assert stopped(histories, ["r"], et) == ["r"]


def test_no_decision_before_first_band_and_non_finite_dropped():
    et = {"type": "hyperband", "min_iter": 3, "eta": 2}
    histories = {"a": [1, 1, 1], "r": [9, 9]}
    assert stopped(histories, ["r"], et) == []
    # NaN/None values are not history rows: r has 2 finite values, so band 3 is not reached
    histories["r"] = [9, float("nan"), None, 9]
    assert stopped(histories, ["r"], et) == []
    histories.update(r=[9, float("nan"), 9, 9], b=[1, 1, 1])  # band 3: [1, 1, 9] -> threshold 1
    assert stopped(histories, ["r"], et) == ["r"]


@pytest.mark.parametrize("goal", ["minimize", "maximize"])
def test_run_at_threshold_is_kept(goal):
    sign = 1 if goal == "minimize" else -1
    et = {"type": "hyperband", "min_iter": 1, "eta": 2}
    histories = {"a": [sign * 1.0], "r": [sign * 2.0]}  # threshold sorted[1] = the worse one = r itself
    assert stopped(histories, ["r"], et, goal) == []


def test_max_iter_and_s_come_first_as_wandb_reads_them():
    from sweeps.hyperband import hyperband_bands

    # W&B checks max_iter before min_iter: max_iter 27, s 2, eta 3 -> bands 3 and 9, not 1, 3, 9, ...
    assert hyperband_bands({"min_iter": 1, "max_iter": 27, "s": 2, "eta": 3}) == [3, 9]
    assert hyperband_bands({"min_iter": 2, "eta": 3})[:3] == [2, 6, 18]


def test_threshold_index_for_a_non_integer_eta_is_wandbs():
    # 33 values, eta 2.2: W&B takes sorted[int((1.0 / 2.2) * 33)] = sorted[15]; int(33 / 2.2) is 14
    values = [[float(v)] for v in range(33)]
    assert int((1.0 / 2.2) * 33) == 15 and int(33 / 2.2) == 14
    assert thresholds(values, [1], 2.2) == {1: 15.0}


@pytest.mark.parametrize(("early_terminate", "message"), [
    ({"type": "hyperband", "max_iter": 2, "s": 2, "eta": 3}, "gives no hyperband bracket"),  # max_iter < eta
    ({"type": "hyperband", "min_iter": 1, "s": 1.5, "max_iter": 9}, "early_terminate.s must be a whole number"),
    ({"type": "hyperband", "min_iter": 1, "strict": "yes"}, "strict must be true or false"),
    ({"type": "envelope", "min_iter": 1}, "only type hyperband"),
    ({"type": "hyperband", "min_iter": 1, "max_iter": 9}, "max_iter needs s"),
])
def test_configurations_wandb_refuses_are_refused_before_launching(early_terminate, message, tmp_path, capsys,
                                                                   monkeypatch):
    """Through `python -m sweeps run` without --cfg: nothing is launched, nothing is written."""
    import yaml

    from sweeps.main import main

    program = tmp_path / "stand_in.py"
    program.write_text("raise SystemExit('must not run')\n")
    sweep = {"program": str(program), "name": "hb", "method": "random",
             "metric": {"name": "val/auroc", "goal": "maximize"}, "early_terminate": early_terminate,
             "parameters": {"x": {"values": [1, 2]}},
             "command": ["${env}", "${interpreter}", "${program}", "${args}"]}
    path = tmp_path / "hb.yaml"
    path.write_text(yaml.safe_dump(sweep))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--count", "1", "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
