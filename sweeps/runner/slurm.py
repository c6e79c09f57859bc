"""The runner inside a SLURM job: is this a batch job, requeue it, launch a run as an `srun` step
(README, "Sweeps on SLURM", has the fault table; the sbatch script: sbatch.py). SIGUSR1 is ours and
asks for a requeue; SIGTERM (scancel, time limit, preemption, `scontrol requeue`) only stops the
runs: SLURM requeues the task itself when it preempts or requeues, and a user's scancel means stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Optional

REQUEUE_SIGNAL = signal.SIGUSR1
REQUEUE_EXIT = 75  # EX_TEMPFAIL: "try again"; exit code of a task that could not requeue itself
INTERACTIVE_NAMES = ("bash", "interactive")  # salloc's job names (Lightning's SLURMEnvironment rule too)


def batch_job_id(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The id that requeues this process's SLURM batch job (`JOB_TASK` for an array task), or None
    outside one (Lightning #19762: requeueing an interactive allocation kills the user's shell). A
    batch script runs in the batch step: on the node (SLURMD_NODENAME), without step variables;
    salloc's shell runs on the login node or as an srun step (SLURM_STEP_ID), named bash/interactive."""
    job = env.get("SLURM_JOB_ID")
    if not job or "SLURM_STEP_ID" in env or not env.get("SLURMD_NODENAME") \
            or env.get("SLURM_JOB_NAME") in INTERACTIVE_NAMES:
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else job


def requeue_after(signum: Optional[int], code: int, env: Mapping[str, str] = os.environ) -> int:
    """After the runner stopped its runs on `signum`: requeue this batch job when the signal
    asked for it (SIGUSR1); the exit code to leave with."""
    job = batch_job_id(env)
    if signum != REQUEUE_SIGNAL or job is None:
        return code
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        print(f"SLURM job {job}: scontrol is not available here (a container?), so this task cannot requeue "
              f"itself; its runs continue in another live task of the sweep, or when you submit the sweep "
              f"again (exit code {REQUEUE_EXIT}: clusters with RequeueExit={REQUEUE_EXIT} requeue on it)",
              file=sys.stderr)
        return REQUEUE_EXIT
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # SLURM's kill of the requeued job reaches us too
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"SLURM job {job}: scontrol requeue failed ({done.stderr.strip()}); its runs continue in another "
              "live task of the sweep, or when you submit the sweep again", file=sys.stderr)
        return REQUEUE_EXIT
    print(f"SLURM job {job} requeued: its runs continue from their checkpoints when it starts again",
          file=sys.stderr)
    return 0


def srun_prefix(nodes: int, tasks_per_node: int, gpus_per_node: int) -> list[str]:
    """argv before a run's own: one srun step that Lightning's SLURMEnvironment joins into one DDP
    run. The ranks are slurmd's children, not the runner's: the lifeline descriptor is left out."""
    argv = ["env", "-u", "XRAY_RUNNER_LIFELINE", "srun", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}",
            f"--ntasks={nodes * tasks_per_node}", "--kill-on-bad-exit=1", "--unbuffered"]
    if gpus_per_node:
        argv.append(f"--gres=gpu:{gpus_per_node}")
    return argv
