"""Careless and hostile input to the offline runner's options, storage URLs, terminal output and
GPU probe (issue 19 items 8, 11-14; issue 18 item 3). Each test is an attack that once got
through. Runs use the stand-in program of test_offline_runner.py; nvidia-smi is a script on PATH."""

from __future__ import annotations

import itertools
import logging
import os
import sys

import optuna
import pytest
from sqlalchemy.engine import make_url
from test_offline_runner import fake, run  # noqa: F401  (fake is a fixture)

from sweeps.main import build_parser
from sweeps.runner.storage import check_url, mask_password

SWEEP = "sweeps/quick_test.yaml"

# ----------------------------------------------------------------------------- numeric options

NUMERIC_OPTIONS = {
    "--count": "3", "--workers": "2", "--gpus-per-trial": "2", "--trials-per-gpu": "2", "--max-failures": "4",
    "--seed": "4294967295", "--heartbeat": "10", "--min-free-gpu-mem": "8.5", "--cv": "5",
    "--nodes-per-trial": "2", "--tasks-per-node": "4",
}
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "1e999"]
OUT_OF_RANGE = {
    "--count": ["0", "-1", "1000001", "1.5"], "--workers": ["0", "100000000"], "--gpus-per-trial": ["0", "65"],
    "--trials-per-gpu": ["0", "1000000"], "--max-failures": ["0", "-3"], "--seed": ["-1", "4294967296", "1" + "0" * 30],
    "--heartbeat": ["0", "-5", "86400"], "--min-free-gpu-mem": ["0", "-1", "1e9"], "--cv": ["1", "0"],
    "--nodes-per-trial": ["0", "-2", "100000"], "--tasks-per-node": ["0", "1000"],
}


def test_every_numeric_option_of_run_is_known_here():
    """A new numeric option must get a range: every int/float option of `run` is listed above."""
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    numeric = {a.option_strings[-1] for a in run._actions
               if a.type is not None and getattr(a.type, "__name__", "") in ("int", "float")}
    assert numeric == set(NUMERIC_OPTIONS)


SLURM_NUMERIC = {"--array": ["0", "-1", "nan", "1e9"], "--gpus-per-task": ["-1", "65", "inf"],
                 "--nodes-per-trial": ["0", "nan"], "--tasks-per-node": ["0"], "--cpus-per-task": ["0", "-4"],
                 "--count": ["0", "nan"], "--heartbeat": ["0", "inf"], "--seed": ["-1", "4294967296"], "--cv": ["1"]}


def test_every_numeric_option_of_slurm_has_a_range():
    slurm = build_parser()._subparsers._group_actions[0].choices["slurm"]
    numeric = {a.option_strings[-1] for a in slurm._actions
               if a.type is not None and getattr(a.type, "__name__", "") in ("int", "float")}
    assert numeric == set(SLURM_NUMERIC)


@pytest.mark.parametrize(("option", "value"), [(o, v) for o, vs in SLURM_NUMERIC.items() for v in vs] + [
    ("--partition", "gpu\nrm -rf ~"), ("--time", "1:00:00\necho pwned"), ("--time", "1 day"),
    ("--sbatch", "--mem=64G\nrm -rf ~"), ("--sbatch", "mem=64G"), ("--partition", "gpu\x1b[2J"), ("--partition", ""),
])
def test_bad_slurm_options_are_refused_when_parsed_naming_the_option(option, value, capsys):
    """A newline in a value written into an #SBATCH line would start a shell command in the script."""
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["slurm", SWEEP, "--array=2", f"{option}={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "error: argument " in line and option in line


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


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- storage URLs

# Passwords built around SECRET, so that any part of one left visible is found.
PASSWORDS = ["SECRET", "p@SECRET", "p@ss/SECRET", "SE CRET", "SE@CR ET/x", "SE:CRET", "SE?CRET", "SE#CRET",
             "SE%40CRET", "SE%20CRET", "SECRET@", "@SECRET", "SÉCRET", "SE/CR/ET"]
SCHEMES = ["postgresql", "postgresql+psycopg2", "mysql+pymysql", "mssql+pyodbc", "oracle+oracledb"]
HOSTS = ["db", "127.0.0.1:1", "[::1]:5432", ""]


def _url_forms() -> list[str]:
    """The combinations SQLAlchemy reads (a few, such as p@SECRET before [::1]:5432, it refuses)."""
    forms = [f"{scheme}://user:{password}@{host}/sweeps"
             for scheme, password, host in itertools.product(SCHEMES, PASSWORDS, HOSTS)]
    for password in PASSWORDS:
        forms += [f"postgresql://user:{password}@db/sweeps?sslmode=require&connect_timeout=1",
                  f"postgresql://user@db/sweeps?password={password}",
                  f"postgresql://:{password}@/sweeps?host=/var/run/postgresql"]
    accepted = []
    for url in forms:
        try:
            make_url(url)
        except Exception:
            continue
        accepted.append(url)
    assert len(accepted) > 0.9 * len(forms)
    return accepted


@pytest.mark.parametrize("url", _url_forms())
def test_no_part_of_a_password_is_shown(url):
    """Every URL form SQLAlchemy reads with a password (user:pw@, :pw@, ?password=), with @, /,
    spaces, : ? # and percent-escapes in the password: masked whole, user and database kept."""
    shown = mask_password(url)
    for piece in ("SECRET", "SE", "CR", "ET", "SÉ"):
        assert piece not in shown.replace("sslmode", ""), (url, shown)
    assert "***" in shown and ("user" in shown or url.startswith("postgresql://:")) and "sweeps" in shown
    if "?password=" not in url:
        assert shown.startswith(url.split("://")[0] + "://" + url.split("://")[1].split(":")[0] + ":***@")


def test_masks_from_the_issue_and_the_kept_forms():
    assert mask_password("postgresql://u:p@ss/secret@127.0.0.1:1/x") == "postgresql://u:***@127.0.0.1:1/x"
    assert mask_password("postgresql://u:se cret@h") == "postgresql://u:***@h"
    assert mask_password("postgresql://alice@db/s?password=s3 cr3t&token=t0k") == \
        "postgresql://alice@db/s?password=***&token=***"
    assert mask_password("cannot connect to postgresql://alice:s3cr3t@db/sweeps: refused") == \
        "cannot connect to postgresql://alice:***@db/sweeps: refused"


@pytest.mark.parametrize("url", ["postgresql://u:p@ss/secret@127.0.0.1:1/x", "postgresql://u:s3@cr3t@127.0.0.1:1/x",
                                 "mysql+pymysql://u:a@b@127.0.0.1:1/x"])
def test_a_password_sqlalchemy_would_cut_at_an_at_is_refused_before_connecting(url, fake, tmp_path, capsys):  # noqa: F811
    """SQLAlchemy ends the password at its first @ and takes the rest for the host: part of the
    password would be looked up in DNS and sent to a server. Refused, masked, nothing created."""
    assert run(tmp_path, fake({"x": {"values": [0.1]}}), "--storage", url) == 2
    err = error_of(capsys)
    assert "%40" in err and "***@127.0.0.1:1/x" in err
    assert not any(piece in err for piece in ("ss/secret", "secret", "cr3t", "b@")), err
    assert not (tmp_path / "out").exists()


def test_a_password_with_a_space_is_masked_in_the_runners_errors(fake, tmp_path, capsys):  # noqa: F811
    url = "postgresql://u:se cret@127.0.0.1:1/x?connect_timeout=1"
    assert run(tmp_path, fake({"x": {"values": [0.1]}}), "--storage", url) == 2  # nothing listens on port 1
    err = error_of(capsys)
    assert "cannot open sweep storage postgresql://u:***@127.0.0.1:1/x" in err and "cret" not in err


def test_sqlite_storage_in_a_missing_folder_is_refused_not_created(fake, tmp_path, capsys):  # noqa: F811
    missing = tmp_path / "nonexistent" / "dir"
    assert run(tmp_path, fake({"x": {"values": [0.1]}}), "--storage", f"sqlite:///{missing}/x.db") == 2
    err = error_of(capsys)
    assert f"the folder {missing} does not exist" in err
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "out").exists()
    check_url(f"sqlite:///{tmp_path}/x.db")  # an existing folder is fine
    check_url("sqlite:///relative.db")


@pytest.mark.parametrize("url", ["postgresql://u:pw@127.0.0.1:1/x", "postgresql+psycopg2://u:pw@127.0.0.1:1/x",
                                 "postgresql+psycopg://u:pw@127.0.0.1:1/x"])
def test_postgresql_without_a_driver_says_what_to_install(url, fake, tmp_path, capsys, monkeypatch):  # noqa: F811
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import fails, find_spec is None
    assert run(tmp_path, fake({"x": {"values": [0.1]}}), "--storage", url) == 2
    err = error_of(capsys)
    assert "`postgres` extra" in err and "psycopg2-binary" in err and "postgresql+psycopg2://" in err, err
    assert "pw" not in err.replace("psycopg", "")


# ----------------------------------------------------------------------------- terminal escapes

HOSTILE = "\x1b[2J\x1b]0;pwned\x07"  # clears the screen, retitles the window, rings the bell
CONTROLS = [chr(c) for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]] + ["\u2028", "\u2029", "\u202e", "\u200b"]


def _shown_raw(text: str) -> list[str]:
    """Characters a terminal would act on (the progress line's own \\r and erase-line aside)."""
    return [ch for ch in text.replace("\r\x1b[K", "") if not ch.isprintable() and ch != "\n"]


def test_visible_escapes_every_control_character():
    from sweeps.text import visible

    for ch in CONTROLS:
        shown = visible(f"a{ch}b")
        assert shown.startswith("a") and shown.endswith("b") and len(shown) > 3 and not _shown_raw(shown), repr(ch)
    assert visible(HOSTILE) == "\\x1b[2J\\x1b]0;pwned\\x07"
    assert visible("line 1\nline 2", keep_newlines=True) == "line 1\nline 2" and visible("a\nb") == "a\\nb"
    assert visible("José 0.001 val/auroc ±") == "José 0.001 val/auroc ±"  # printable text is left alone


def test_hostile_parameter_values_reach_the_terminal_escaped(fake, tmp_path, capsys):  # noqa: F811
    """A categorical value with terminal escapes, through the runner's progress lines, its
    summary, and `best` (table, best parameters)."""
    from sweeps.main import main

    sweep = fake({"x": {"values": [0.5]}, "tag": {"values": [HOSTILE]}, "epochs": {"value": 1}})
    assert run(tmp_path, sweep) == 0
    assert main(["best", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "run 0000 started" in out and "best: run" in out
    assert out.count("\\x1b[2J\\x1b]0;pwned\\x07") >= 4 and not _shown_raw(out), out


def test_the_live_status_line_escapes_the_best_parameters():
    import io

    from sweeps.runner.progress import Progress

    stream = io.StringIO()
    progress = Progress(4, live=True, stream=stream)
    progress.update({"finished": 1, "stopped": 0, "failed": 0, "running": 1}, (0.9, {"tag": HOSTILE}, "runs/0000"))
    progress.event(f"run 0001 failed: {HOSTILE}")
    progress.close()
    text = stream.getvalue()
    assert "\\x1b]0;pwned" in text and not _shown_raw(text), repr(text)


def test_error_lines_escape_the_values_they_name(tmp_path, capsys):
    from sweeps.main import main

    assert main(["best", str(tmp_path / f"missing{HOSTILE}")]) == 2
    assert main(["report", str(tmp_path / f"missing{HOSTILE}")]) == 2
    err = error_of(capsys)
    assert err.count("missing\\x1b[2J") == 2 and not _shown_raw(err), repr(err)


# ----------------------------------------------------------------------------- a flaky nvidia-smi

UUID0, UUID1 = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", "GPU-1e0c3a55-0b2e-4a6f-9d7e-5c1f2a3b4c5d"
SMI_OUTPUTS = {  # (stdout, exit code, seconds to hang)
    "[N/A]": (f"0, {UUID0}, [N/A]\n1, {UUID1}, [N/A]\n", 0, 0),
    "garbage": ("Failed to initialize NVML: Driver/library version mismatch\n", 0, 0),
    "non-zero exit": ("", 9, 0),
    "timeout": ("", 0, 30),
    "empty": ("", 0, 0),
}


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """A fake nvidia-smi first on PATH; `smi(stdout, code, hang)` rewrites what it does."""
    from sweeps.runner import placement

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(placement, "PROBE_TIMEOUT_S", 0.5)

    def set_to(stdout: str, code: int = 0, hang: float = 0) -> None:
        script = bin_dir / "nvidia-smi"
        (bin_dir / "out.txt").write_text(stdout)
        body = f"exec sleep {hang}\n" if hang else f'cat "{bin_dir}/out.txt"\necho "nvidia-smi says no" >&2\nexit {code}\n'
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)

    return set_to


HEALTHY = f"0, {UUID0}, 2048\n1, {UUID1}, 40960\n"  # GPU 0: 2 GB free, GPU 1: 40 GB


@pytest.mark.parametrize("case", list(SMI_OUTPUTS))
def test_a_failing_gpu_probe_waits_and_warns_once_never_raises(case, smi, caplog):
    """At start-up: one clear error (not a ValueError). During the sweep: no new run on the GPU
    for now, one warning, and runs start again when nvidia-smi answers again."""
    from sweeps.runner import placement

    smi(*SMI_OUTPUTS[case])
    with pytest.raises(placement.GpuProbeError) as error:  # start-up: offline.py turns it into one error line
        placement.check_slots(["0", "1"])
    assert case != "[N/A]" or "no free memory for GPU(s) 0, 1" in str(error.value)

    smi(HEALTHY)
    clock = [0.0]
    guard = placement.GpuMemoryGuard(8, settle_s=0, clock=lambda: clock[0])
    assert guard.blocked("1") is None and "below" in guard.blocked("0")
    smi(*SMI_OUTPUTS[case])
    with caplog.at_level(logging.WARNING, logger="sweeps.runner.placement"):
        for _ in range(4):  # several reads while it keeps failing
            clock[0] += placement.RETRY_S
            assert "free memory unknown" in guard.blocked("1")
            assert "free memory unknown" in guard.blocked("0,1")
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1, warnings
        smi(HEALTHY)
        clock[0] += placement.RETRY_S
        assert guard.blocked("1") is None  # back: runs start again
    if case != "[N/A]":  # nvidia-smi itself failed: its return is said too
        assert "answers again" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("gb", [float("nan"), float("inf"), 0.0, -1.0])
def test_the_guard_itself_refuses_a_threshold_that_would_disable_it(gb):
    from sweeps.runner import placement

    with pytest.raises(ValueError, match="--min-free-gpu-mem"):
        placement.GpuMemoryGuard(gb, free_gb=lambda: {"0": 1.0})


def test_gpu_uuids_abbreviated_uuids_and_mig_ids(smi):
    from sweeps.runner import placement

    smi(HEALTHY)
    guard = placement.GpuMemoryGuard(8, settle_s=0)
    for name in (UUID0, UUID0[:12], "0"):  # GPU 0 has 2 GB free: blocked whatever its name
        assert "2.0 GB free, below" in guard.blocked(name), name
    for name in (UUID1, UUID1[:12], "1"):
        assert guard.blocked(name) is None, name
    assert "unknown" in guard.blocked("GPU-")  # a prefix of both names no GPU (CUDA needs a unique one)
    mig = "MIG-4ad5e56c-4b43-5ad1-8e16-8d4f51ad4a5a"
    assert "unknown" in guard.blocked(mig)
    placement.check_slots([UUID0[:12], "1", None])
    with pytest.raises(placement.GpuProbeError, match=f"GPU\\(s\\) {mig} \\(MIG instances"):
        placement.check_slots(["0", mig])


@pytest.mark.parametrize(("value", "ids"), [
    ("2,3", ["2", "3"]), (" 1 , 2 ", ["1", "2"]), ("GPU-aa,GPU-bb,-1,GPU-cc", ["GPU-aa", "GPU-bb"]),
    ("0,NoDevFiles,1", ["0"]), ("NoDevFiles", []), ("1abc,2", ["1", "2"]), ("0,0", []), ("", []), ("0,,1", ["0"]),
    ("MIG-4ad5e56c-4b43-5ad1-8e16-8d4f51ad4a5a", ["MIG-4ad5e56c-4b43-5ad1-8e16-8d4f51ad4a5a"]),
    ("MIG-GPU-8932f937/1/0", ["MIG-GPU-8932f937/1/0"]),
])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(value, ids, monkeypatch):
    from rundir.slots import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == ids


def test_a_flaky_gpu_probe_during_a_sweep_kills_no_run(fake, smi, tmp_path, monkeypatch, capsys, caplog):  # noqa: F811
    """nvidia-smi fails on every second call: the sweep still runs every run to the end."""
    from sweeps.runner import placement

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(placement, "RETRY_S", 0.05)
    monkeypatch.setattr(placement, "READ_EVERY_S", 0.0)
    monkeypatch.setattr(placement, "SETTLE_S", 0.0)
    smi(HEALTHY.replace("2048", "40960"))
    script = tmp_path / "bin" / "nvidia-smi"
    healthy = script.read_text()
    flaky = tmp_path / "bin" / "calls"
    script.write_text(f'#!/bin/sh\necho x >> "{flaky}"\n[ $(wc -l < "{flaky}") -gt 1 ] && '
                      f'[ $(( $(wc -l < "{flaky}") % 2 )) -eq 0 ] && exit 3\n' + healthy.split("\n", 1)[1])
    sweep = fake({"x": {"values": [0.1, 0.2]}, "epochs": {"value": 1}})
    with caplog.at_level(logging.WARNING, logger="sweeps.runner.placement"):
        assert run(tmp_path, sweep, "--min-free-gpu-mem", "8") == 0
    trials = optuna.load_study(study_name="fake", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}").get_trials()
    assert sorted(t.user_attrs["state"] for t in trials) == ["finished"] * 2
    assert int(flaky.read_text().count("x")) >= 3  # it did fail during the sweep
    assert any("cannot read the GPUs' free memory" in r.getMessage() for r in caplog.records)
