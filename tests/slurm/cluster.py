"""A SLURM cluster for the tests: the one on this machine that tests/slurm/start_slurm.sh
runs (started here when it is not running and we may start it), used through its commands.
Missing SLURM skips the tests, or fails them under XRAY_REQUIRE_SLURM=1 (.ci/run), as
XRAY_REQUIRE_POSTGRES does for PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DEFAULT_CONF = Path(os.environ.get("XRAY_SLURM_DIR", "/tmp/xray-slurm")) / "slurm.conf"


def slurm_missing(why: str) -> None:
    """Skip where SLURM is optional; fail where it was meant to be there (XRAY_REQUIRE_SLURM=1)."""
    if os.environ.get("XRAY_REQUIRE_SLURM") == "1":
        pytest.fail(f"{why}; XRAY_REQUIRE_SLURM=1 says it should be there")
    pytest.skip(why)


def _answers(env: dict) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


class Cluster:
    """The running cluster: its config (SLURM_CONF) and the commands the tests need."""

    def __init__(self, conf: str) -> None:
        self.env = dict(os.environ, SLURM_CONF=conf)
        self.jobs: list[str] = []  # submitted by the current test; cancelled after it

    def cmd(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def states(self, job: str) -> dict[str, dict[str, str]]:
        """Array task id ('7_0') -> scontrol's fields (JobState, ExitCode, Restarts, ...)."""
        out = self.cmd("scontrol", "-o", "show", "job", job, check=False)
        tasks = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayJobId" in fields:
                tasks[f"{fields['ArrayJobId']}_{fields.get('ArrayTaskId')}"] = fields
            elif "JobId" in fields:
                tasks[fields["JobId"]] = fields
        return tasks

    def queued(self, job: str) -> list[str]:
        """Pending, running or completing tasks of `job` (squeue shows no finished ones)."""
        return self.cmd("squeue", "-h", "-r", "-j", job, "-o", "%i %T", check=False).split("\n")[:-1]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.2)

    def wait_done(self, job: str, timeout: float) -> dict[str, dict[str, str]]:
        self.wait(lambda: not self.queued(job), timeout, f"job {job} to end: {self.queued(job)}")
        return self.states(job)

    def cancel_all(self) -> None:
        """Leave no job behind: cancel this test's jobs and wait until they are gone."""
        for job in self.jobs:
            self.cmd("scancel", "--quiet", job, check=False)
        for job in self.jobs:
            self.wait(lambda job=job: not self.queued(job), 60, f"cancelled job {job} to leave")
        self.jobs.clear()


def start_cluster() -> tuple[Cluster, bool]:
    """(the cluster, whether it was started here and should be stopped after the tests)."""
    if shutil.which("sbatch") is None:
        slurm_missing("SLURM is not installed (apt-get install slurm-wlm munge)")
    conf = os.environ.get("SLURM_CONF") or str(DEFAULT_CONF)
    if _answers(dict(os.environ, SLURM_CONF=conf)):
        return Cluster(conf), False
    if os.geteuid() != 0:
        slurm_missing(f"no SLURM cluster answers (SLURM_CONF={conf}); start one with tests/slurm/start_slurm.sh")
    done = subprocess.run(["bash", str(HERE / "start_slurm.sh")], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        slurm_missing(f"tests/slurm/start_slurm.sh failed: {done.stderr.strip()[-500:]}")
    return Cluster(str(DEFAULT_CONF)), True


def stop_cluster() -> None:
    subprocess.run(["bash", str(HERE / "stop_slurm.sh")], capture_output=True, timeout=120)
