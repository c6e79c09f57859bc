"""Careless and hostile input to the offline runner's options, storage URLs, terminal output and
GPU probe (issue 19 items 8, 11-14; issue 18 item 3). Fast, no processes except a fake nvidia-smi."""

from __future__ import annotations

import pytest

from sweeps.main import build_parser

SWEEP = "sweeps/quick_test.yaml"

# ----------------------------------------------------------------------------- numeric options

NUMERIC_OPTIONS = {
    "--count": "3", "--workers": "2", "--gpus-per-trial": "2", "--trials-per-gpu": "2", "--max-failures": "4",
    "--seed": "4294967295", "--heartbeat": "10", "--min-free-gpu-mem": "8.5", "--cv": "5",
}
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "1e999"]
OUT_OF_RANGE = {
    "--count": ["0", "-1", "1000001", "1.5"], "--workers": ["0", "100000000"], "--gpus-per-trial": ["0", "65"],
    "--trials-per-gpu": ["0", "1000000"], "--max-failures": ["0", "-3"], "--seed": ["-1", "4294967296", "1" + "0" * 30],
    "--heartbeat": ["0", "-5", "86400"], "--min-free-gpu-mem": ["0", "-1", "1e9"], "--cv": ["1", "0"],
}


def test_every_numeric_option_of_run_is_known_here():
    """A new numeric option must get a range: every int/float option of `run` is listed above."""
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    numeric = {a.option_strings[-1] for a in run._actions
               if a.type is not None and getattr(a.type, "__name__", "") in ("int", "float")}
    assert numeric == set(NUMERIC_OPTIONS)


def test_good_numbers_parse():
    argv = ["run", SWEEP] + [x for option, value in NUMERIC_OPTIONS.items() for x in (option, value)]
    args = build_parser().parse_args(argv)
    assert (args.count, args.seed, args.heartbeat, args.min_free_gpu_mem) == (3, 2**32 - 1, 10.0, 8.5)


@pytest.mark.parametrize(("option", "value"), [(o, v) for o in NUMERIC_OPTIONS for v in NOT_FINITE + OUT_OF_RANGE[o]])
def test_bad_numbers_are_refused_when_parsed_naming_the_option(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", SWEEP, f"{option}={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert f"argument {option}" in line or f"/{option}:" in line, line
    assert "at least" in line or "above" in line, line  # says what is allowed
