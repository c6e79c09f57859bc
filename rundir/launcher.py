"""The one launcher of the runner's trials and the CV parent's folds: start a run in its directory
and slot, poll it, stop it (SIGTERM to its main process, as the W&B agent does; SIGKILL after a grace)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rundir.layout import OUTPUT_LOG, RUN_DIR_ENV
from rundir.slots import GPU_SLOT_ENV, cpu_threads

POLL_S = 0.5  # how often a launcher looks at its runs


def child_env(**extra: Optional[str]) -> dict[str, str]:
    """The environment of a run or an agent: ours, with this interpreter's directory first on
    PATH, since the agent runs `/usr/bin/env python` (a venv that is not activated, too)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def slot_env(slot: Optional[str], slots: Sequence[Optional[str]]) -> dict[str, Optional[str]]:
    """What a process started in `slot` (one of `slots`) is told: its GPUs, that it was given
    them (it fails at once when it sees none: slots.check_gpu_slot), its share of the cores."""
    return {"CUDA_VISIBLE_DEVICES": slot, GPU_SLOT_ENV: slot, "OMP_NUM_THREADS": cpu_threads(list(slots))}


@dataclass(kw_only=True)
class Launched:
    """A started run. `own_group`: it leads a process group of its own (the runner's trials:
    killing the group ends DDP ranks and loader workers too); a CV fold stays in its parent's
    group, so that whoever kills the parent's group ends the folds with it."""

    proc: subprocess.Popen
    slot: int  # index into the launcher's slots
    run_dir: Path
    own_group: bool = True
    started: float = field(default_factory=time.monotonic)
    term_at: Optional[float] = None  # time.monotonic() of the SIGTERM

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def terminate(self) -> None:
        """SIGTERM to the run's main process only, as the W&B agent does; once."""
        if self.term_at is None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            self.term_at = time.monotonic()

    def overdue(self, grace_s: float) -> bool:
        return self.term_at is not None and time.monotonic() - self.term_at > grace_s and self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            elif self.proc.poll() is None:
                self.proc.kill()


def start(argv: list[str], run_dir: Path, *, slot: int, slots: Sequence[Optional[str]], cwd: Optional[Path] = None,
          env: Optional[dict[str, Optional[str]]] = None, own_group: bool = True,
          pass_fds: tuple[int, ...] = ()) -> Launched:
    """Start `argv` in `run_dir` (XRAY_RUN_DIR), in slot `slots[slot]`, its output appended to
    the run's output.log (a continued run keeps its earlier log)."""
    environ = child_env(**{RUN_DIR_ENV: str(Path(run_dir).resolve()), **slot_env(slots[slot], slots), **(env or {})})
    with open(Path(run_dir) / OUTPUT_LOG, "ab") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=own_group, pass_fds=pass_fds)
    return Launched(proc=proc, slot=slot, run_dir=Path(run_dir), own_group=own_group)


def free_slot(running: Iterable[Launched], slots: Sequence[Optional[str]]) -> Optional[int]:
    busy = {r.slot for r in running}
    return next((i for i in range(len(slots)) if i not in busy), None)


def stop_all(running: Iterable[Launched], grace_s: float) -> None:
    running = list(running)
    for run in running:
        run.terminate()
    while any(run.poll() is None for run in running):
        for run in running:
            if run.overdue(grace_s):
                run.kill()
        time.sleep(0.05)
    for run in running:
        if run.own_group:
            run.kill()  # nothing of a stopped run may linger (DDP ranks, loader workers)
