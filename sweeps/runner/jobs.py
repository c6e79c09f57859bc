"""One run of an offline sweep: the launched process with the trial it runs, its outcome, and where
an interrupted run continues (its own directory: last.ckpt, or a cross-validated run's folds)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rundir.grace import AGENT_KILL_AFTER_S
from rundir.launcher import Launched
from rundir.layout import LAST_CHECKPOINT, OUTPUT_LOG, is_cv_run
from rundir.records import checkpoint_problem
from sweeps.runner.reasons import failure_reason


def resume_point(resume: Optional[dict]) -> tuple[Optional[Path], str]:
    """(the run directory a trial given back continues, or None to start over; what to say)."""
    if not resume:
        return None, ""
    run_dir, of = Path(resume["run_path"]), f"run {int(resume.get('of', -1)):04d}"
    ckpt = run_dir / LAST_CHECKPOINT
    if not run_dir.is_dir():
        return None, f"{of}'s directory {run_dir} is not reachable here: it starts over"
    if not ckpt.is_file() and is_cv_run(run_dir):
        return run_dir, f"continues {of}, a cross-validated run, in its directory: the folds that finished are kept"
    if not ckpt.is_file():
        return None, f"{of} left no checkpoint: it starts over"
    problem = checkpoint_problem(ckpt, load=False)  # the run loads it and starts over should that fail
    if problem is not None:
        return None, f"{of}'s checkpoint {ckpt} is unreadable ({problem}): it starts over"
    return run_dir, f"continues {of} from its checkpoint"


@dataclass(kw_only=True)
class Job(Launched):
    trial: Any  # optuna.trial.Trial
    attrs: dict
    stop_reason: Optional[str] = None
    interrupted: bool = False  # by this runner's SIGINT/SIGTERM: it continues on the next start
    lost: bool = False  # another runner gave its trial back (no heartbeat from us): it continues elsewhere
    trained: bool = False  # training ended (after-fit mark): hyperband leaves it alone
    history: list = field(default_factory=list)
    reported: int = 0  # history values given to Optuna as intermediate values
    trial_id: int = -1  # the storage's id of the trial (heartbeats)

    def outcome(self, code: int) -> tuple[str, Optional[str]]:
        """(state, reason) of the run that ended with exit status `code`."""
        if self.lost:
            return "interrupted", "another runner found no heartbeat from this runner and continues it"
        if self.interrupted:
            return "interrupted", "the runner was interrupted; the run continues on the next start"
        if code == 0 or (self.term_at is not None and code < 0 and self.stop_reason):
            if code < 0:
                return "stopped", (f"{self.stop_reason} (did not exit within {AGENT_KILL_AFTER_S:g} s of SIGTERM; "
                                   "killed)")
            return ("stopped" if self.stop_reason else "finished"), self.stop_reason
        return "failed", failure_reason(self.run_dir / OUTPUT_LOG, code)


def fresh_run_dir(sweep_dir: Path, number: int) -> Path:
    """runs/NNNN, or runs/NNNN-rK when a trial of that number ran before (another storage)."""
    run_dir = sweep_dir / "runs" / f"{number:04d}"
    for i in itertools.count(2):
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            run_dir = sweep_dir / "runs" / f"{number:04d}-r{i}"
