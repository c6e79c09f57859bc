"""Sweeps on SLURM (`python -m sweeps slurm`, sweeps/runner/slurm.py, sbatch.py, journal.py).

Fast tests: batch-job detection, the requeue decision, the generated script, network file
systems and the journal storage. Slow tests run against a real SLURM on this machine
(tests/slurm/start_slurm.sh; .ci/run starts it) with the runner tests' stand-in program, one
per row of the README's SLURM fault table."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import test_offline_runner
from slurm.cluster import Cluster, slurm_missing, start_cluster, stop_cluster
from test_offline_runner import _going, counted, points, write

from sweeps.main import main
from sweeps.runner import journal as runner_journal
from sweeps.runner.slurm import REQUEUE_EXIT, batch_job_id, requeue_after

ROOT = Path(__file__).resolve().parents[1]
# Bounds, not synchronisation: a runner's start-up imports take 3 s on an idle machine, 40 s on
# the shared 2-core dev box.
START_S, DONE_S = 120, 180
fake = test_offline_runner.fake  # the fixture with the runner tests' stand-in program (FAKE_CLI)
BATCH = {"SLURM_JOB_ID": "12", "SLURMD_NODENAME": "node1", "SLURM_JOB_NAME": "sweep"}


# -- in the job: is this a batch job, and requeue it
@pytest.mark.parametrize("env, expected", [
    (BATCH, "12"),
    (dict(BATCH, SLURM_ARRAY_JOB_ID="10", SLURM_ARRAY_TASK_ID="2"), "10_2"),  # the task, not the whole array
    ({}, None),
    (dict(BATCH, SLURM_JOB_NAME="interactive", SLURMD_NODENAME=""), None),  # salloc's shell on the login node
    (dict(BATCH, SLURM_JOB_NAME="bash"), None),  # srun --pty bash: Lightning's rule (#19762)
    (dict(BATCH, SLURM_STEP_ID="0"), None),  # an srun step (also salloc's interactive step)
])
def test_batch_job_id_tells_a_batch_task_from_an_interactive_shell(env, expected):
    assert batch_job_id(env) == expected


@pytest.fixture
def fake_scontrol(tmp_path):
    """An scontrol on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    return bin_dir, tmp_path / "calls"


def test_requeue_after_usr1_in_a_batch_task_only(fake_scontrol):
    bin_dir, calls = fake_scontrol
    env = dict(BATCH, SLURM_ARRAY_JOB_ID="10", SLURM_ARRAY_TASK_ID="2", PATH=str(bin_dir))
    assert requeue_after(signal.SIGTERM, 130, env) == 130  # scancel / preemption: SLURM decides
    assert requeue_after(signal.SIGUSR1, 130, dict(env, SLURM_JOB_NAME="bash")) == 130  # interactive
    assert requeue_after(None, 0, env) == 0
    assert not calls.exists()
    assert requeue_after(signal.SIGUSR1, 130, env) == 0
    assert calls.read_text().split() == ["requeue", "10_2"]


def test_without_scontrol_a_task_exits_with_the_requeue_code(tmp_path, capsys):
    assert requeue_after(signal.SIGUSR1, 130, dict(BATCH, PATH=str(tmp_path))) == REQUEUE_EXIT
    assert "scontrol is not available" in capsys.readouterr().err


# -- the script
def _dry_run(fake, tmp_path, *extra: str) -> str:
    sweep_file = write(tmp_path, fake({"x": {"values": [0.1, 0.2]}}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["slurm", sweep_file, "--out", str(tmp_path / "out"), "--dry-run", *extra]) == 0
    return out.getvalue()


def test_dry_run_writes_and_shows_the_script(fake, tmp_path):
    shown = _dry_run(fake, tmp_path, "--array", "3", "--gpus-per-task", "2", "--time", "2:00:00",
                     "--partition", "gpu", "--count", "2", "--sbatch=--mem=8G")
    script = (tmp_path / "out" / "slurm" / "fake.sbatch").read_text()
    assert script in shown and "not submitted" in shown
    for line in ("#SBATCH --array=0-2", "#SBATCH --signal=B:USR1@90", "#SBATCH --requeue", "#SBATCH --gres=gpu:2",
                 "#SBATCH --time=2:00:00", "#SBATCH --partition=gpu", "#SBATCH --mem=8G", "#SBATCH --nodes=1"):
        assert line in script.splitlines() or any(s.startswith(line + " ") for s in script.splitlines()), line
    runner = next(s for s in script.splitlines() if s.startswith("exec "))
    assert f"--storage journal://{tmp_path / 'out' / 'optuna.journal'}" in runner and "--count 2" in runner
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_every_task_prunes_checkpoints_as_asked(fake, tmp_path):
    """`slurm --keep-checkpoints` reaches each task's runner (they share the study's K)."""
    for keep, expected in (("1", "--keep-checkpoints 1"), ("all", "--keep-checkpoints all"), (None, None)):
        (out := tmp_path / str(keep)).mkdir()
        script = _dry_run(fake, out, "--array", "2", *(["--keep-checkpoints", keep] if keep else []))
        runner = next(s for s in script.splitlines() if s.startswith("exec "))
        assert (expected in runner) if expected else "--keep-checkpoints" not in runner


def test_dry_run_of_a_multi_node_trial(fake, tmp_path):
    script = _dry_run(fake, tmp_path, "--array", "1", "--gpus-per-task", "4", "--nodes-per-trial", "2")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "--nodes-per-trial 2 --tasks-per-node 4 --gpus-per-trial 4" in script
    assert "unset SLURM_NTASKS" not in script  # the runs are srun steps: Lightning reads them


def test_dry_run_with_wandb_agents(fake, tmp_path):
    script = _dry_run(fake, tmp_path, "--array", "2", "--gpus-per-task", "4", "--backend", "wandb")
    assert "wandb agent ENTITY/PROJECT/ID & done" in script and "exec " not in script
    assert subprocess.run(["bash", "-n"], input=script.split("\nwrote ")[0], text=True).returncode == 0


# -- storage on shared file systems
@pytest.fixture
def on_nfs(tmp_path, monkeypatch):
    """/proc/mounts saying that tmp_path is an NFS mount."""
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n")
    monkeypatch.setattr(runner_journal, "MOUNTS", str(mounts))


def test_network_file_systems_are_recognised(tmp_path, on_nfs):
    assert runner_journal.network_fs(tmp_path / "a" / "optuna.db") == "nfs4"
    assert runner_journal.network_fs(Path("/usr")) is None


def test_sqlite_on_a_network_file_system_is_refused(fake, tmp_path, on_nfs, capsys):
    sweep_file = write(tmp_path, fake({"x": {"values": [0.1]}}))
    assert main(["run", sweep_file, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "network file system (nfs4)" in err and ".journal" in err and not list(tmp_path.glob("out/runs/*"))
    assert main(["slurm", sweep_file, "--out", str(tmp_path / "o2"), "--array", "1", "--dry-run",
                 "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2


def test_a_journal_file_holds_a_sweep(fake, tmp_path):
    xs = [0.1, 0.2, 0.3]
    sweep_file = write(tmp_path, fake({"x": {"values": xs}, "epochs": {"value": 2}}))
    journal = tmp_path / "shared" / "sweep.journal"
    assert main(["run", sweep_file, "--out", str(tmp_path / "out"), "--quiet", "--storage", str(journal)]) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="fake", storage=storage).get_trials()
    assert sorted(points(trials)) == [(x,) for x in xs] and len(trials) == 3


def test_journal_heartbeats_find_a_silent_trial(tmp_path, monkeypatch):
    """The heartbeat adapter on the journal, through Optuna's own fail_stale_trials (it reads the
    storage's _get_stale_trial_ids, as the runner's recovery does): a trial silent for the grace
    period is stale, a beating one is not."""
    storage = runner_journal.journal_storage(tmp_path / "s.journal", 1, 3)
    study = optuna.create_study(storage=storage, study_name="s")
    silent, beating = study.ask(), study.ask()
    for t in (silent, beating):
        storage.record_heartbeat(t._trial_id)
    now = runner_journal.time.time()
    monkeypatch.setattr(runner_journal.time, "time", lambda: now + 10)
    storage.record_heartbeat(beating._trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == [silent._trial_id]
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]


def test_runners_on_one_journal_take_turns(tmp_path):
    """Issue 20: "count the runs, then ask" on a journal file is one critical section across
    runners (Optuna's own lock guards single appends only), so no surplus trial is ever drawn."""
    import threading

    from sweeps.runner.storage import Storage

    journal = str(tmp_path / "shared" / "sweep.journal")
    a, b = (Storage(journal, "s", "minimize", optuna.samplers.RandomSampler(0), heartbeat=1) for _ in range(2))
    assert a.locked and b.locked
    entered = threading.Event()

    def other_runner() -> None:
        with b.critical():
            entered.set()

    with a.critical():
        thread = threading.Thread(target=other_runner)
        thread.start()
        assert not entered.wait(0.5)  # held by a
    assert entered.wait(10)
    thread.join()


def test_a_runner_waiting_long_never_breaks_a_lock_just_taken(tmp_path):
    """Optuna's symlink lock times a waiter's grace from the last change of the target's mtime.
    The runners' lock file was never written, so with many array tasks a runner that had waited
    LOCK_GRACE_S in all (the lock changing hands meanwhile) broke a lock just taken, and two
    runners counted and asked at once. Each new holder now touches the target."""
    import os

    from sweeps.runner.journal import journal_lock

    lock = journal_lock(tmp_path / "sweep.journal")
    target = tmp_path / "sweep.journal.runner"
    os.utime(target, (0, 0))  # as if the lock had not changed hands since 1970
    assert lock.acquire()
    try:
        assert target.stat().st_mtime > 1e9  # a waiter sees a new holder: its grace starts again
    finally:
        lock.release()


# -- against a real SLURM
@pytest.fixture(scope="session")
def _cluster():
    cluster, started = start_cluster()
    yield cluster
    if started:
        stop_cluster()


@pytest.fixture
def cluster(_cluster, monkeypatch) -> Cluster:
    monkeypatch.setenv("SLURM_CONF", _cluster.env["SLURM_CONF"])
    yield _cluster
    _cluster.cancel_all()


def test_missing_slurm_fails_where_it_is_required(monkeypatch):
    monkeypatch.setenv("XRAY_REQUIRE_SLURM", "1")
    with pytest.raises(pytest.fail.Exception, match="XRAY_REQUIRE_SLURM=1"):
        slurm_missing("no sbatch")
    monkeypatch.delenv("XRAY_REQUIRE_SLURM")
    with pytest.raises(pytest.skip.Exception, match="no sbatch"):
        slurm_missing("no sbatch")


def submit(cluster: Cluster, tmp_path: Path, sweep: dict, *extra: str) -> str:
    """`python -m sweeps slurm` with the stand-in program; the array job's id."""
    sweep_file = write(tmp_path, sweep)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["slurm", sweep_file, "--out", str(tmp_path / "out"), "--heartbeat", "1", *extra])
    assert code == 0, out.getvalue()
    job = out.getvalue().split("submitted job array ")[1].split()[0]
    cluster.jobs.append(job)
    return job


def trials(tmp_path: Path) -> list:
    journal = tmp_path / "out" / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="fake", storage=storage).get_trials()


def task_of(record: dict) -> str:
    """The SLURM array task ('7_1') whose runner runs the run of this run.json record."""
    env = Path(f"/proc/{record['runner']['pid']}/environ").read_bytes().split(b"\0")
    fields = dict(item.decode().split("=", 1) for item in env if b"=" in item)
    return f"{fields['SLURM_ARRAY_JOB_ID']}_{fields['SLURM_ARRAY_TASK_ID']}"


def log_of(tmp_path: Path, task: str) -> str:
    return (tmp_path / "out" / "slurm" / f"{task}.out").read_text()


def continued(tmp_path: Path, first: dict, epochs: int) -> optuna.trial.FrozenTrial:
    """`first`'s trial, continued as the same trial number: same directory, from its checkpoint,
    one history row per epoch, started twice (the second time from the epoch it had reached);
    no other trial ran its parameters."""
    done = trials(tmp_path)
    (rerun,) = [t for t in done if t.number == first["trial"]]
    assert [t.number for t in done if t.params == rerun.params] == [first["trial"]]
    assert rerun.state == optuna.trial.TrialState.COMPLETE
    assert rerun.user_attrs["state"] == "finished" and rerun.user_attrs["resumed"]
    assert rerun.user_attrs["run_dir"] == first["run_dir"]
    x = rerun.user_attrs["params"]["x"]
    assert rerun.user_attrs["history"] == pytest.approx([x * (1 + e) / epochs for e in range(epochs)])
    run_dir = tmp_path / "out" / first["run_dir"]
    starts = [json.loads(line)["epoch"] for line in (run_dir / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 1, starts
    rows = [json.loads(line)["epoch"] for line in (run_dir / "sweep_history.jsonl").read_text().splitlines()]
    assert rows == list(range(epochs))  # nothing repeated, nothing lost
    return rerun


@pytest.mark.slow  # a SLURM job array, ~15 s
def test_array_sweep_runs_every_grid_point_once_and_every_task_exits(cluster, fake, tmp_path):
    xs = [round(0.1 * i, 1) for i in range(1, 7)]
    job = submit(cluster, tmp_path, fake({"x": {"values": xs}, "epochs": {"value": 3}, "delay": {"value": 0.4}}),
                 "--array", "2")
    states = cluster.wait_done(job, DONE_S)
    assert sorted(states) == [f"{job}_0", f"{job}_1"]
    assert all((s["JobState"], s["ExitCode"]) == ("COMPLETED", "0:0") for s in states.values()), states
    done = trials(tmp_path)
    # Each point once, and no surplus trial: the tasks take turns at the journal (journal_lock).
    assert sorted(points(done)) == [(x,) for x in xs]
    assert [t.user_attrs["state"] for t in done] == ["finished"] * len(xs)
    assert len({t.user_attrs["runner"]["pid"] for t in counted(done)}) == 2  # both tasks ran runs


@pytest.mark.slow  # a SLURM job requeued once, ~40 s
@pytest.mark.parametrize("how", ["scontrol requeue", "scancel --signal=USR1 -b"])
def test_a_requeued_task_continues_its_trial_from_its_checkpoint(cluster, fake, tmp_path, how):
    """Preemption (`scontrol requeue`: SIGTERM, SLURM requeues) and the time-limit warning
    (SIGUSR1 to the batch shell: the task requeues itself): the run saves last.ckpt, the task
    comes back and continues the same run in the same directory."""
    epochs = 8
    job = submit(cluster, tmp_path, fake({"x": {"values": [0.3]}, "epochs": {"value": epochs},
                                          "delay": {"value": 0.6}}), "--array", "1")
    out = tmp_path / "out"
    cluster.wait(lambda: _going(out), START_S, "the run's first epoch")
    first = _going(out)
    task = f"{job}_0"
    cluster.cmd(*how.split(), task)
    states = cluster.wait_done(job, DONE_S)
    assert (states[task]["JobState"], states[task]["ExitCode"], states[task]["Restarts"]) == ("COMPLETED", "0:0", "1")
    continued(tmp_path, first, epochs)
    stopped = json.loads((out / first["run_dir"] / "stopped.json").read_text())
    assert stopped["by"] == "SIGTERM"  # stopped cleanly by the runner (or SLURM), not killed
    if how.startswith("scancel"):
        assert f"SLURM job {task} requeued" in log_of(tmp_path, task)


@pytest.mark.slow  # two submissions, ~40 s
def test_a_cancelled_sweep_continues_when_submitted_again(cluster, fake, tmp_path):
    """`scancel`: the run stops cleanly and its trial waits; the same command submitted again
    continues it from its checkpoint, and nothing finished runs again."""
    epochs = 8
    sweep = fake({"x": {"values": [0.3]}, "epochs": {"value": epochs}, "delay": {"value": 0.6}})
    job = submit(cluster, tmp_path, sweep, "--array", "1")
    out = tmp_path / "out"
    cluster.wait(lambda: _going(out), START_S, "the run's first epoch")
    first = _going(out)
    cluster.cmd("scancel", f"{job}_0")
    assert cluster.wait_done(job, DONE_S)[f"{job}_0"]["JobState"] == "CANCELLED"
    (waiting,) = trials(tmp_path)  # the same trial, waiting to continue
    assert waiting.state == optuna.trial.TrialState.WAITING and waiting.user_attrs["state"] == "interrupted"
    again = submit(cluster, tmp_path, sweep, "--array", "1")
    assert cluster.wait_done(again, DONE_S)[f"{again}_0"]["ExitCode"] == "0:0"
    continued(tmp_path, first, epochs)


def _two_tasks_one_going(cluster: Cluster, tmp_path: Path, fake, *extra: str) -> tuple[str, dict, str]:
    """A 2-task array over 2 long runs; (job, a going run's record, its task)."""
    sweep = fake({"x": {"values": [0.3, 0.6]}, "epochs": {"value": 8}, "delay": {"value": 0.6}})
    job = submit(cluster, tmp_path, sweep, "--array", "2", *extra)
    out = tmp_path / "out"
    cluster.wait(lambda: _going(out), START_S, "a run's first epoch")
    record = _going(out)
    return job, record, task_of(record)


@pytest.mark.slow  # ~30 s
def test_a_killed_task_is_recovered_by_the_other_through_the_heartbeat(cluster, fake, tmp_path):
    """SIGKILL to the task's processes (`scancel --signal=KILL --batch`; without --batch SLURM
    cancels as plain scancel does, SIGTERM first): no signal to act on, as when a node fails.
    The other task gives the trial back after 3 missed heartbeats and continues it, as the same
    trial, from its checkpoint."""
    job, first, task = _two_tasks_one_going(cluster, tmp_path, fake)
    cluster.cmd("scancel", "--signal=KILL", "--batch", task)
    states = cluster.wait_done(job, DONE_S)
    other = next(t for t in states if t != task)
    assert states[other]["ExitCode"] == "0:0" and states[task]["ExitCode"] == "0:9", states
    assert "SIGTERM" not in log_of(tmp_path, task)  # killed, not stopped
    rerun = continued(tmp_path, first, 8)
    assert rerun.user_attrs["runner"]["pid"] != first["runner"]["pid"]
    assert "lost its runner" in log_of(tmp_path, other)
    assert sorted(points(trials(tmp_path))) == [(0.3,), (0.6,)]


@pytest.mark.slow  # ~30 s
def test_without_scontrol_a_preempted_trial_continues_in_another_task(cluster, fake, tmp_path):
    """Inside a container without scontrol the task cannot requeue itself: it stops its run
    cleanly, exits with the requeue code, and the other live task continues the trial."""
    job, first, task = _two_tasks_one_going(cluster, tmp_path, fake,
                                            f"--sbatch=--export=ALL,PATH={Path(sys.executable).parent}")
    cluster.cmd("scancel", "--signal=USR1", "-b", task)
    states = cluster.wait_done(job, DONE_S)
    other = next(t for t in states if t != task)
    assert states[other]["ExitCode"] == "0:0" and states[task]["ExitCode"] == f"{REQUEUE_EXIT}:0", states
    assert "scontrol is not available" in log_of(tmp_path, task)
    continued(tmp_path, first, 8)
    assert sorted(points(trials(tmp_path))) == [(0.3,), (0.6,)]


@pytest.mark.slow  # two real cli.py ranks, ~60 s (3 min on the busy dev box)
def test_a_trial_on_two_srun_tasks_is_one_ddp_run(cluster, hand_data, tmp_path, monkeypatch):
    """--nodes-per-trial: the trial is an srun step of 2 tasks (CPU, gloo) that Lightning's
    SLURMEnvironment joins into one DDP run: one history row per epoch, one W&B run."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    sweep = {
        "program": "cli.py", "name": "ddp", "method": "grid", "metric": {"name": "val/loss", "goal": "minimize"},
        "parameters": {"model.lr": {"values": [0.001]}},
        "command": ["${env}", "${interpreter}", "${program}", "fit", "--config", "configs/demo.yaml",
                    f"--data.root={hand_data}", "--demo.body_part=null", "--trainer.accelerator=cpu",
                    "--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                    "--data.num_workers=0", "--data.image_size=32", "--data.batch_size=4", "--run.test_after_fit=false",
                    "--sweep.metric=val/loss", "${args}"],
    }
    job = submit(cluster, tmp_path, sweep, "--array", "1", "--nodes-per-trial", "1", "--tasks-per-node", "2")
    assert cluster.wait_done(job, 2 * DONE_S)[f"{job}_0"]["ExitCode"] == "0:0", log_of(tmp_path, f"{job}_0")
    journal = tmp_path / "out" / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    (trial,) = optuna.load_study(study_name="ddp", storage=storage).get_trials()
    run_dir = tmp_path / "out" / trial.user_attrs["run_dir"]
    output = (run_dir / "output.log").read_text()
    assert trial.user_attrs["state"] == "finished", output[-3000:]
    assert "srun" not in trial.user_attrs["argv"][0] and "--trainer.num_nodes=1" in trial.user_attrs["argv"]
    assert "MEMBER: 2/2" in output  # Lightning's DDP with two processes, started by srun
    assert len(trial.user_attrs["history"]) == 2  # rank 0 logs: one row per epoch
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run


@pytest.mark.slow
def test_no_job_left_behind(cluster):
    """Runs after the slow tests of this file (pytest keeps file order): nothing of ours queued."""
    assert not [line for line in cluster.cmd("squeue", "-h", "-o", "%j %i").splitlines()
                if line.split()[0] in ("fake", "ddp")]

