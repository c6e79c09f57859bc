"""Careless and hostile input to the sweep tools (issue 13, items 2 and 5-14): each test is an
attack that once got through, and says what must hold now. The data side (items 1, 3, 4) is
in test_hostile_data.py. Most runs use the stand-in program of test_offline_runner.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT
from test_analysis import make_sweep_dir
from test_offline_runner import counted, fake, load, points, run, write  # noqa: F401  (fake is a fixture)

from sweeps.files import Sweep
from sweeps.files.io import MAX_DEPTH, MAX_VALUES, load_sweep
from sweeps.main import main
from sweeps.runner.reasons import failure_reason
from sweeps.runner.storage import mask_password

PATIENT = "images/Doe Jane 1970-01-01 MRN778899.png"
PATIENT_PARTS = ("Doe", "Jane", "1970-01-01", "MRN778899")


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


# ---- 2: failure reasons name no file -------------------------------------------------------------

REASONS = {
    "cli.py ImageReadError": f"error: cannot read image {PATIENT!r}: file is empty (0 bytes)",
    "a quote in the name": "error: cannot read image \"images/O'Doe Jane 1970-01-01 MRN778899.png\": truncated",
    "Python's own error": f"Traceback (most recent call last):\n  File \"x.py\", line 1\nFileNotFoundError: "
                          f"[Errno 2] No such file or directory: '/data/ra/{PATIENT}'",
    "unquoted, spaces": f"error: cannot read image {PATIENT}: not a PNG",
    "unquoted, absolute": "error: manifest /data/Doe Jane 1970-01-01 MRN778899/manifest.csv has no rows",
    "Windows path": r"error: cannot read image 'D:\scans\Doe Jane 1970-01-01 MRN778899.dcm': bad",
    "bare file name": "error: DOE^JANE_1970-01-01_MRN778899.dcm: not a DICOM file",
}


@pytest.mark.parametrize("case", list(REASONS))
def test_failure_reason_names_no_file(case, tmp_path):
    log = tmp_path / "output.log"
    log.write_text(f"epoch 0\n{REASONS[case]}\n")
    reason = failure_reason(log, 2)
    assert "<path>" in reason and not any(part in reason for part in PATIENT_PARTS), reason


def test_failure_reason_keeps_what_is_not_a_file(tmp_path):
    log = tmp_path / "output.log"
    for line, kept in (("error: model.lr must be > 0, got -1", "model.lr must be > 0, got -1"),
                       ("error: diverged: train/loss is nan at step 3", "diverged: train/loss is nan at step 3"),
                       ("error: unknown label(s) ['abnormal']", "unknown label(s) ['abnormal']")):
        log.write_text(line + "\n")
        assert failure_reason(log, 2) == kept


def test_the_cli_message_of_an_unreadable_image_is_stored_without_its_name(tmp_path, monkeypatch):
    """The exact text cli.py prints for an unreadable image (`error: ` + ImageReadError)."""
    from datamodules.readers import ImageReadError, read_image

    monkeypatch.chdir(tmp_path)
    Path("images").mkdir()
    Path(PATIENT).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # truncated
    with pytest.raises(ImageReadError) as e:
        read_image(PATIENT)
    log = tmp_path / "output.log"
    log.write_text(f"error: {e.value}\n")
    reason = failure_reason(log, 2)
    assert reason.startswith("cannot read image <path>: ") and not any(p in reason for p in PATIENT_PARTS), reason


FAILING_PROGRAM = f"""
import sys
print("loading data", flush=True)
print("error: cannot read image {PATIENT!r}: file is empty (0 bytes)", file=sys.stderr)
sys.exit(2)
"""


def test_a_failed_run_stores_its_reason_without_the_file_name(fake, tmp_path, capsys):  # noqa: F811
    program = tmp_path / "failing_cli.py"
    program.write_text(FAILING_PROGRAM)
    sweep = dict(fake({"x": {"values": [0.1, 0.2]}}), program=str(program))
    code = run(tmp_path, sweep)
    out = tmp_path / "out"
    stored = [json.dumps(t.user_attrs) for t in load(tmp_path)]
    stored += [p.read_text() for p in out.glob("runs/*/run.json")]
    assert stored and all("cannot read image <path>" in s for s in stored)
    assert not any(part in s for s in stored for part in PATIENT_PARTS)
    assert code == 1  # no run has a result
    assert main(["best", str(out)]) == 2  # no completed run; the table is printed first
    shown = capsys.readouterr()
    assert "cannot read image <path>" in shown.out and not any(p in shown.out + shown.err for p in PATIENT_PARTS)


# ---- 5: sweep files that explode ---------------------------------------------------------------

ALIAS_BOMB = """\
method: grid
metric: {name: val/score, goal: maximize}
a: &a [x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
parameters:
  x: {values: *h}
"""


def _huge(tmp_path: Path) -> str:
    return "method: grid\nparameters: {x: {values: [1]}}\n#" + "x" * (1 << 20) + "\n"


SWEEP_FILE_BOMBS = {
    "alias bomb (9^9 nodes from 400 bytes)": (lambda tmp: ALIAS_BOMB, "more than 100,000 YAML nodes"),
    "recursive alias": (lambda tmp: "method: grid\nparameters: &p {x: {values: [1, *p]}}\n", "recursive"),
    "nested 5000 deep": (lambda tmp: "method: grid\nparameters: " + "[" * 5000 + "]" * 5000 + "\n",
                         f"nested too deeply (more than {MAX_DEPTH} levels"),
    "block-nested 5000 deep": (lambda tmp: "method: grid\nparameters:\n" + "- " * 5000 + "1\n",
                               f"nested too deeply (more than {MAX_DEPTH} levels"),
    "over 1 MiB": (_huge, "larger than 1 MiB"),
    "too many values": (lambda tmp: yaml.safe_dump({"method": "random", "parameters": {
        "x": {"values": list(range(MAX_VALUES + 1))}}}), f"{MAX_VALUES + 1:,} values"),
    "not text": (lambda tmp: "\udcff\udcfe method", "not UTF-8"),
}


@pytest.mark.parametrize("case", list(SWEEP_FILE_BOMBS))
def test_sweep_file_bombs_refused_at_load_naming_the_file(case, tmp_path, capsys):
    text, expected = SWEEP_FILE_BOMBS[case]
    path = tmp_path / "bomb.yaml"
    path.write_bytes(text(tmp_path).encode("utf-8", "surrogateescape"))
    from sweeps.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(expected)) as e:
        load_sweep(path)
    assert str(path) in str(e.value)
    assert main(["run", str(path)]) == 2
    assert expected in error_of(capsys)


def test_deep_brackets_are_refused_before_yaml_scans_them(tmp_path, monkeypatch):
    """PyYAML's scanner slows with bracket depth before its composer can count levels (over 10 s
    on a busy machine for 5,000), so the depth is counted on the text first."""
    from sweeps.errors import UsageError
    from sweeps.files import io

    path = tmp_path / "deep.yaml"
    path.write_text("method: grid\nparameters: {x: {values: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}}\n")
    monkeypatch.setattr(io.yaml, "load", lambda *a, **k: pytest.fail("YAML scanned a file nested too deeply"))
    with pytest.raises(UsageError, match=f"{path}.*more than {MAX_DEPTH} levels"):
        load_sweep(path)


def test_brackets_in_comments_and_quotes_are_not_nesting(tmp_path):
    deep = "[{" * MAX_DEPTH
    path = tmp_path / "ok.yaml"
    path.write_text(f"# {deep}\nmethod: grid\nparameters:\n  a: {{values: ['{deep}', \"{deep}\", [[1]]]}}  # {deep}\n")
    assert load_sweep(path).parameters["a"].spec == {"values": [deep, deep, [[1]]]}


def test_a_sweep_file_with_a_few_aliases_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("method: grid\nparameters:\n  a: {values: &lrs [0.1, 0.01]}\n  b: {values: *lrs}\n")
    assert load_sweep(path).parameters["b"].spec == {"values": [0.1, 0.01]}


def test_a_huge_grid_is_refused_with_its_size_not_materialised(fake, tmp_path, capsys):  # noqa: F811
    sweep = fake({f"p{i}": {"values": list(range(10))} for i in range(10)})
    started = time.monotonic()
    assert run(tmp_path, sweep) == 2
    err = error_of(capsys)
    assert "10,000,000,000 points" in err and "storage" not in err and time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


# ---- 6: two runners on one random or bayes sweep ------------------------------------------------


def _runner(sweep_file: str, storage: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps", "run", sweep_file, "--storage", storage, "--out", str(out),
                             "--quiet", "--count", "4", "--workers", "2", "--seed", "0"], cwd=ROOT,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_two_runners_draw_distinct_configurations(fake, tmp_path, method):  # noqa: F811
    sweep = fake({"x": {"min": 0.0, "max": 1.0}, "epochs": {"value": 3}, "delay": {"value": 0.3}}, method=method)
    sweep_file = write(tmp_path, sweep)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [_runner(sweep_file, storage, tmp_path / f"out{i}") for i in range(2)]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output
    trials = counted(load(tmp_path, storage=storage))
    assert len(trials) == 4 and len(set(points(trials))) == 4, points(trials)


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_runners_sharing_a_study_draw_distinct_configurations_and_one_runner_repeats(tmp_path, method):
    """The same, without processes: two samplers with one --seed on one study, asks interleaved."""
    from sweeps.runner.space import build_space, make_sampler

    space = build_space(Sweep.from_dict({"method": method, "metric": {"name": "val/score"},
                                         "parameters": {"x": {"min": 0.0, "max": 1.0}, "k": {"values": list(range(50))}}}))

    def draws(url: str, runners: int) -> list:
        studies = [optuna.create_study(storage=url, study_name="s", load_if_exists=True,
                                       sampler=make_sampler(space, 0)) for _ in range(runners)]
        seen = []
        for i in range(6):
            trial = studies[i % runners].ask(space.distributions)
            studies[i % runners].tell(trial, trial.params["x"])
            seen.append((trial.params["x"], trial.params["k"]))
        return seen

    two = draws(f"sqlite:///{tmp_path / 'two.db'}", 2)
    assert len(set(two)) == 6, two
    assert draws(f"sqlite:///{tmp_path / 'one.db'}", 1) == draws(f"sqlite:///{tmp_path / 'again.db'}", 1)


# ---- 7-11: what W&B would refuse, refused before the first launch --------------------------------


def test_goal_max_is_refused(fake, tmp_path, capsys):  # noqa: F811
    sweep = fake({"x": {"values": [0.1, 0.9]}})
    sweep["metric"]["goal"] = "max"
    assert run(tmp_path, sweep) == 2
    err = error_of(capsys)
    assert "'max'" in err and "maximize" in err and not (tmp_path / "out" / "runs").exists()


def test_a_one_point_grid_runs_its_point(fake, tmp_path):  # noqa: F811
    assert run(tmp_path, fake({"x": {"values": [0.4]}, "epochs": {"value": 1}})) == 0
    trials = load(tmp_path)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] and points(trials) == [(0.4,)]


@pytest.mark.parametrize("case", ["every run failed", "no run logged the metric"])
def test_a_sweep_with_no_result_exits_non_zero(case, fake, tmp_path, capsys):  # noqa: F811
    if case == "every run failed":
        sweep = fake({"mode": {"values": ["error", "crash"]}})
    else:
        sweep = fake({"x": {"values": [0.1, 0.2]}})
        sweep["metric"]["name"] = "val/never_logged"
    assert run(tmp_path, sweep) == 1
    assert "no run finished with a value of the sweep metric" in error_of(capsys)


def test_unknown_parameter_names_refused_before_the_first_launch(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    sweep = {"program": "cli.py", "name": "typo", "method": "grid", "metric": {"name": "val/auroc", "goal": "maximize"},
             "parameters": {"model.lrr": {"values": [0.1, 0.2]}, "data.batch_size": {"value": 8}},
             "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml", "${args}"]}
    assert run(tmp_path, sweep) == 2
    assert "model.lrr" in error_of(capsys) and not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("name", ["../escape", "{tmp}/escape", "a/../../escape", "x\nrun.wandb: online", "..", ""])
def test_sweep_names_are_validated(name, fake, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    name = name.replace("{tmp}", str(tmp_path))
    sweep = dict(fake({"x": {"values": [0.1, 0.2]}}), name=name)
    path = write(tmp_path, sweep, "named.yaml")
    code = main(["run", path, "--quiet"])
    if name == "":  # no name: the file's stem, a valid one
        assert code == 0 and (tmp_path / "sweep_runs" / "named").is_dir()
        return
    assert code == 2 and "is not allowed" in error_of(capsys)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "sweep_runs").exists()


@pytest.mark.parametrize("name", ["x\nrun:\n  wandb: online", "x\rrun: {wandb: online}", "x\x85run: 1",
                                  "x\u2028run: 1"])
def test_best_export_cannot_be_injected_by_a_sweep_name(name, tmp_path):
    sweep_dir = make_sweep_dir(tmp_path)
    sweep = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(dict(sweep, name=name)))
    export = tmp_path / "best.yaml"
    assert main(["best", str(sweep_dir), "--export", str(export)]) == 0
    text = export.read_text()
    assert set(yaml.safe_load(text)) <= {"trainer", "model", "data"}  # no run.wandb or anything else injected
    assert not any(ch in text for ch in "\r\x85\u2028\u2029")  # YAML line breaks, in a comment


# ---- 12: a lost optuna.db ----------------------------------------------------------------------


def test_a_truncated_optuna_db_is_not_taken_for_a_new_sweep(fake, tmp_path, capsys):  # noqa: F811
    sweep = fake({"x": {"values": [0.1, 0.2]}, "epochs": {"value": 1}})
    assert run(tmp_path, sweep) == 0
    out = tmp_path / "out"
    (out / "optuna.db").write_bytes(b"")  # truncated to 0 bytes
    capsys.readouterr()
    assert run(tmp_path, sweep) == 2
    err = error_of(capsys)
    assert "run.json" in err and "Restore" in err and "move" in err
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["0000", "0001"]  # nothing run again
    # best still lists the finished runs, from their records
    assert main(["best", str(out)]) == 0
    assert "2 runs (2 finished)" in capsys.readouterr().out


# ---- 13: passwords in storage URLs -------------------------------------------------------------

URLS = {
    "user and password": ("postgresql://alice:s3cr3t@db/sweeps", "postgresql://alice:***@db/sweeps"),
    "no user": ("postgresql://:s3cr3t@db/sweeps", "postgresql://:***@db/sweeps"),
    "@ in the password": ("postgresql://alice:s3@cr3t@db/sweeps", "postgresql://alice:***@db/sweeps"),
    "/ in the password": ("postgresql://alice:s3/cr3t@db/sweeps", "postgresql://alice:***@db/sweeps"),
    "percent-encoded": ("mysql+pymysql://alice:s3%40cr3t@db:3306/sweeps", "mysql+pymysql://alice:***@db:3306/sweeps"),
    "query password": ("postgresql://alice@db/sweeps?password=s3cr3t", "postgresql://alice@db/sweeps?password=***"),
    "query secrets": ("postgresql://db/s?sslmode=require&sslpassword=s3cr3t&token=s3cr3t",
                      "postgresql://db/s?sslmode=require&sslpassword=***&token=***"),
    "libpq keywords": ("host=db user=alice password=s3cr3t dbname=sweeps", "host=db user=alice password=*** dbname=sweeps"),
    "in a message": ("cannot connect to postgresql://alice:s3cr3t@db/sweeps: refused",
                     "cannot connect to postgresql://alice:***@db/sweeps: refused"),
    "no secret": ("sqlite:////tmp/sweep_runs/x/optuna.db", "sqlite:////tmp/sweep_runs/x/optuna.db"),
}


@pytest.mark.parametrize("case", list(URLS))
def test_passwords_are_masked(case):
    url, masked = URLS[case]
    assert mask_password(url) == masked and "s3" not in mask_password(url).replace("sslmode", "")


def test_storage_errors_show_no_password(fake, tmp_path, capsys):  # noqa: F811
    assert run(tmp_path, fake({"x": {"values": [0.1]}}), "--storage",
               "postgresql://:s3cr3t@127.0.0.1:1/db?password=s3cr3t&connect_timeout=1") == 2
    err = error_of(capsys)
    assert "cannot open sweep storage" in err and "s3cr3t" not in err


# ---- 14: unwritable outputs and a damaged optuna.db: one `error:` paragraph ----------------------


def _blocked(tmp_path: Path, how: str) -> Path:
    """A path no write can succeed at, even as root (chmod does not stop root)."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir(exist_ok=True)
    return {"under /dev/null": Path("/dev/null/x"), "under a file": tmp_path / "file" / "x",
            "a file": tmp_path / "file", "a folder": tmp_path / "folder"}[how]


@pytest.mark.parametrize("how", ["under /dev/null", "under a file", "a file"])
def test_run_into_an_unwritable_out(how, fake, tmp_path, capsys):  # noqa: F811
    out = _blocked(tmp_path, how)
    assert main(["run", write(tmp_path, fake({"x": {"values": [0.1]}})), "--out", str(out), "--quiet"]) == 2
    assert "--out" in error_of(capsys)


def test_run_with_a_folder_where_optuna_db_goes(fake, tmp_path, capsys):  # noqa: F811
    (tmp_path / "out" / "optuna.db").mkdir(parents=True)
    assert run(tmp_path, fake({"x": {"values": [0.1]}})) == 2
    assert "cannot open sweep storage" in error_of(capsys)


@pytest.mark.parametrize("how", ["under /dev/null", "under a file", "a folder"])
def test_best_export_to_an_unwritable_path(how, tmp_path, capsys):
    sweep_dir = make_sweep_dir(tmp_path)
    target = _blocked(tmp_path, how)
    assert main(["best", str(sweep_dir), "--export", str(target)]) == 2
    assert str(target) in error_of(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("how", ["under /dev/null", "under a file", "a folder", "report.html a folder"])
def test_report_to_an_unwritable_path(how, tmp_path, capsys):
    pytest.importorskip("plotly")
    sweep_dir = make_sweep_dir(tmp_path)
    if how == "report.html a folder":
        (sweep_dir / "report.html").mkdir()
        target, args = sweep_dir / "report.html", []
    else:
        target = _blocked(tmp_path, how)
        args = ["--out", str(target)]
    assert main(["report", str(sweep_dir), *args]) == 2
    assert f"cannot write {target}" in error_of(capsys)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")] if target.parent.is_dir() else True


@pytest.mark.parametrize("command", ["best", "report"])
def test_a_damaged_optuna_db_under_best_and_report(command, tmp_path, capsys):
    pytest.importorskip("plotly")
    sweep_dir = make_sweep_dir(tmp_path)
    (sweep_dir / "optuna.db").write_bytes(b"this is not a database" * 100)
    assert main([command, str(sweep_dir)]) == 2
    err = error_of(capsys)
    assert "cannot read the sweep storage" in err and "optuna.db" in err and "move it aside" in err


@pytest.mark.parametrize("how", ["under /dev/null", "under a file", "a folder"])
def test_generate_into_an_unwritable_path(how, tmp_path, capsys):
    target = _blocked(tmp_path, how)
    assert main(["generate", "--sweep_config", "quick_test", "-o", str(target)]) == 2
    assert f"cannot write {target}" in error_of(capsys)
    out_dir = tmp_path / "file" if how == "a folder" else target  # --out_dir: a file where a folder goes
    assert main(["generate", "--out_dir", str(out_dir)]) == 2
    assert "cannot write" in error_of(capsys)


@pytest.mark.parametrize("how", ["under /dev/null", pytest.param("under a file", marks=pytest.mark.slow)])
def test_cli_with_an_unwritable_run_root(how, tmp_path):
    """cli.py's --run.root where no directory can be made; as a process, as a user sees it."""
    root = _blocked(tmp_path, how)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("XRAY_RUN_DIR", None)
    done = subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/demo.yaml", f"--run.root={root}",
                           f"--data.root={tmp_path / 'data'}", "--demo.body_part=null"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "error: cannot create a run directory" in done.stderr, done.stderr[-3000:]
    assert str(root) in done.stderr and "--run.root" in done.stderr


@pytest.mark.slow  # a cli.py process, about 8 s on two cores
def test_cli_with_an_unwritable_inherited_run_dir(tmp_path):
    """XRAY_RUN_DIR (set by the offline runner, or by hand to resume) where no directory can be made."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", XRAY_RUN_DIR=str(blocker / "run"))
    done = subprocess.run([sys.executable, "cli.py", "fit", "--config", "configs/demo.yaml",
                           f"--data.root={tmp_path / 'data'}", "--demo.body_part=null"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "error: cannot create a run directory" in done.stderr
