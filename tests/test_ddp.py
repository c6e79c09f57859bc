"""Multi-process DDP on CPU (gloo): one logged run, balanced shards, and a clean stop when
the W&B agent sends SIGTERM to the main process only (SIGKILL follows 30 s later)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch
from conftest import PYTHON, ROOT, run_dirs
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from datamodules.datasets import EpochSeededWeightedSampler

AGENT_KILL_DELAY = 30  # wandb_agent.py: SIGKILL this long after SIGTERM


def ddp_command(hand_data, tmp_path, *extra):
    return [
        PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml",
        f"--data.root={hand_data}", "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        "--data.num_workers=0", "--data.image_size=32", "--data.batch_size=4",
        "--trainer.enable_progress_bar=false", "--run.wandb=offline", *extra,
    ]


def test_weighted_sampler_gives_ranks_disjoint_shards_of_one_balanced_draw():
    labels = [0] * 90 + [1] * 10
    weights = torch.tensor([1 / 90 if y == 0 else 1 / 10 for y in labels], dtype=torch.double)
    shards = []
    for rank in range(2):
        sampler = DistributedSamplerWrapper(
            EpochSeededWeightedSampler(weights, 1000, seed=7), num_replicas=2, rank=rank, shuffle=False
        )
        shards.append(list(sampler))
    # same draw on both ranks, split in two: together they are the whole balanced draw
    draw = list(EpochSeededWeightedSampler(weights, 1000, seed=7))
    assert sorted(shards[0] + shards[1]) == sorted(draw)
    minority = sum(labels[i] for i in draw) / len(draw)
    assert 0.4 < minority < 0.6  # 10 % of the data, about half of the draw
    # a new epoch draws anew
    again = EpochSeededWeightedSampler(weights, 1000, seed=7)
    assert list(again) != list(again)


@pytest.mark.slow
def test_ddp_two_processes_give_one_run_with_synchronized_metrics(hand_data, tmp_path):
    from wandb_records import exit_code, history, run_file

    done = subprocess.run(
        ddp_command(hand_data, tmp_path, "--trainer.max_epochs=2", "--data.balancing=weighted_sampler"),
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)  # both ranks wrote into one run directory
    wandb_file = run_file(run_dir)  # exactly one W&B run: rank 1 never created one
    rows = [r for r in history(wandb_file) if "val/auroc" in r]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert exit_code(wandb_file) == 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # Metrics cover the whole validation split, each image once: the confusion matrix of the last
    # validation counts every image although each rank saw only half of them (DistributedSampler
    # repeats one when the count is odd), and the logged accuracy is its trace / total.
    import csv

    from datamodules.datamodule import XrayDataModule

    n_val = len(XrayDataModule(root=str(hand_data), classes=["normal", "abnormal"]).split_records["val"])
    with open(run_dir / "confusion_val.csv") as f:
        matrix = [[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]]
    total = sum(map(sum, matrix))
    assert n_val % 2 == 1  # so that DistributedSampler pads: this test checks the padding counts nowhere
    assert total == n_val
    with open(run_dir / "metrics.csv") as f:
        last_val = [r for r in csv.DictReader(f) if r.get("val/acc")][-1]
    assert float(last_val["val/acc"]) == pytest.approx((matrix[0][0] + matrix[1][1]) / total, abs=1e-6)


def _cli_processes(root_pid: int) -> list[psutil.Process]:
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if _is_cli(p)]


def _is_cli(proc: psutil.Process) -> bool:
    try:
        return "cli.py" in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)  # polling interval, not a guess at timing
    return False


def _history_lines(run_dir) -> int:
    path = run_dir / "sweep_history.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _training_at(run_dir) -> tuple[int, int]:
    """(epoch, batch) of the last training batch started, from fault_callbacks.Beacon; (-1, -1) before."""
    path = run_dir / "beacon.txt"
    lines = path.read_text().split("\n") if path.exists() else []
    done = [line for line in lines[:-1] if line]  # the last piece may be half-written
    return tuple(map(int, done[-1].split())) if done else (-1, -1)


def _catches_sigterm(pid: int) -> bool:
    """The process has installed a SIGTERM handler (Linux: SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)


# Where the signal lands, each a state waited for: during start-up (cli.py's stop flag is
# installed, imports and process-group set-up still to come), right when the first validation
# has ended (ranks inside the end-of-validation collectives), at the first training batch after
# it, and mid-epoch a few epochs in.
LANDINGS = {
    "startup": lambda proc, run_dir: _wait_for(lambda: _catches_sigterm(proc.pid), 120),
    "end_of_validation": lambda proc, run_dir: _wait_for(lambda: _history_lines(run_dir) >= 1, 240),
    "just_after_validation": lambda proc, run_dir: _wait_for(lambda: _training_at(run_dir) >= (1, 0), 240),
    "mid_training": lambda proc, run_dir: _wait_for(lambda: _training_at(run_dir) >= (2, 1), 240),
}


@pytest.mark.slow
@pytest.mark.parametrize("landing", list(LANDINGS))
def test_sigterm_to_ddp_main_process_exits_zero_with_no_process_left(landing, hand_data, tmp_path):
    from wandb_records import exit_code, run_file

    cmd = ddp_command(hand_data, tmp_path, "--trainer.max_epochs=200", "--trainer.limit_train_batches=3",
                      "--trainer.limit_val_batches=2", "--run.name=stopme",
                      "--trainer.callbacks+=fault_callbacks.Beacon")
    run_dir = tmp_path / "runs" / "demo" / "stopme"
    log = open(tmp_path / "output.log", "w")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"))  # the ranks import fault_callbacks
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    if landing != "startup":
        assert _wait_for(lambda: len(_cli_processes(proc.pid)) == 2, 120), "DDP child never started"
    assert LANDINGS[landing](proc, run_dir), f"never reached the {landing} moment"
    if landing == "startup":
        assert len(_cli_processes(proc.pid)) == 1 and not run_dir.exists()  # really before training
    family = _cli_processes(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)  # like the agent: the direct child only
    try:
        code = proc.wait(timeout=AGENT_KILL_DELAY)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {AGENT_KILL_DELAY}s after SIGTERM ({landing}):\n"
                    + (tmp_path / "output.log").read_text()[-3000:])
    assert code == 0, (tmp_path / "output.log").read_text()[-3000:]
    assert _wait_for(lambda: not any(p.is_running() and _is_cli(p) for p in family), 10), "a DDP rank survived"
    if landing != "startup":
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert exit_code(run_file(run_dir)) == 0  # W&B run finished, not crashed
        lines = [json.loads(x) for x in (run_dir / "sweep_history.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in lines] == list(range(len(lines)))
