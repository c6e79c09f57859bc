"""Keeping a sweep's disk small (README, "Keeping the disk small"): after every trial of the offline
runner, and `python -m sweeps prune DIR --keep K`. One run's files: rundir/checkpoints.py."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from optuna.trial import TrialState

from rundir.checkpoints import Pruned, busy, checkpoints, needed, remove, strip
from rundir.layout import COMPLETED, CONFIG_FILE, CV_FILE, HISTORY_FILE, RUN_RECORD, TRAINING_FILE
from sweeps.contract.history import best_of, read_history, training_done
from sweeps.errors import UsageError
from sweeps.files.io import load_sweep
from sweeps.runner.storage import DB_FILE
from sweeps.runner.trials import ENDED

DEFAULT_KEEP = 3  # the winner and two runners-up: a second look (calibration, subgroups) needs no retraining
KEEP_ATTR = "keep_checkpoints"  # the study's user attr: the K of every runner of the sweep (None: keep all)
# A plain `fit` (a W&B agent's run) holds no fit.lock: such a run is left alone until this long
# after its last write (it writes last.ckpt every epoch, its W&B files every few seconds).
IDLE_S = 3600.0


@dataclass(frozen=True)
class Run:
    path: Path
    state: str  # finished | stopped | failed; anything else: left alone
    value: Optional[float] = None  # the sweep metric's best (finished runs are ranked by it)


def live_dirs(trials: list, sweep_dir: Path) -> set[Path]:
    """Run directories that a trial runs or will continue: running, waiting (a retry names the
    directory it continues) or failed for want of its runner's heartbeat (a retry follows)."""
    live = set()
    for t in trials:
        attrs = t.user_attrs
        stale = t.state == TrialState.FAIL and attrs.get("state") in (None, "running")
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or stale:
            for where in (attrs.get("run_path"), attrs.get("run_dir"), (attrs.get("resume") or {}).get("run_path")):
                if isinstance(where, str):
                    live.add((sweep_dir / where).resolve())
    return live


def sweep_runs(sweep_dir: Path, live: set[Path]) -> list[Run]:
    """An offline sweep's runs/*: state and value from the runner's run.json."""
    runs = []
    for path in sorted(p for p in (sweep_dir / "runs").glob("*") if p.is_dir()):
        try:
            record = json.loads((path / RUN_RECORD).read_text())
        except (OSError, ValueError):
            record = None  # not written yet, or damaged: not known, left alone
        record = record if isinstance(record, dict) else {}
        state = "live" if path.resolve() in live else str(record.get("state"))
        value = record.get("value")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        runs.append(Run(path, state, float(value) if ok else None))
    return runs


def folder_runs(root: Path, metric: str, goal: str) -> list[Run]:
    """Run directories without a sweep record (W&B agents' runs/<experiment>/<run id>/, or a folder
    of experiments): finished when training was done, ranked by the best value in their history."""
    def is_run(p: Path) -> bool:  # files only this project's runs write: never another program's checkpoints
        return p.is_dir() and (p / CONFIG_FILE).is_file() and ((p / HISTORY_FILE).is_file() or (p / TRAINING_FILE).is_file())

    def entries(p: Path) -> list[Path]:
        try:
            return sorted(p.iterdir()) if p.is_dir() else []
        except OSError:  # a folder we may not read holds nothing we may prune
            return []

    dirs = [p for p in entries(root) if is_run(p)]
    dirs += [q for p in entries(root) if not is_run(p) for q in entries(p) if is_run(q)]
    runs = []
    for path in dirs:
        history = read_history(path / HISTORY_FILE, metric)
        done = training_done(path / TRAINING_FILE, len(history)) or (path / CV_FILE).is_file()
        runs.append(Run(path, "finished" if done else "stopped", best_of(history, goal) if done else None))
    return runs


def prune_runs(root: Path, runs: list[Run], keep: int, goal: str, *, dry_run: bool = False,
               idle_s: Optional[float] = None) -> tuple[Pruned, list[Run]]:
    """(what was pruned, the kept runs best first). Ended runs outside the K best (ranked as `best`
    ranks them) lose every checkpoint; the K best keep what their results use, without training state."""
    sign = -1 if goal == "maximize" else 1
    ranked = [r for r in runs if r.state in COMPLETED and r.value is not None]
    best = sorted(ranked, key=lambda r: (sign * r.value, r.path.name))[:keep]
    pruned = Pruned()
    for run in runs:
        files = checkpoints(run.path) if run.state in ENDED else []
        why = busy(run.path, idle_s) if files else None
        if why:
            pruned.skipped.append(f"{run.path.name}: {why}")
            continue
        keepers = needed(run.path) if run in best else set()
        for path in files:
            (strip if path in keepers else remove)(path, root, pruned, dry_run)
    return pruned, best


def after_trial(store, sweep_dir: Path, goal: str, say: Callable[[str], None]) -> None:
    """The offline runner's step each time one of its trials ends. Never ends a sweep: a
    failure here only leaves more on the disk, and says so."""
    try:
        keep = store.study.user_attrs.get(KEEP_ATTR, DEFAULT_KEEP)
        if keep is None:
            return
        root = Path(sweep_dir).resolve()
        pruned, _ = prune_runs(root, sweep_runs(root, live_dirs(store.trials(), root)), int(keep), goal)
    except Exception as e:
        say(f"checkpoints not pruned: {type(e).__name__}: {e}")
        return
    if pruned.removed or pruned.stripped:
        say(f"checkpoints pruned (--keep-checkpoints {keep}): {len(pruned.removed)} removed, "
            f"{len(pruned.stripped)} without training state; {size(pruned.freed)} freed")


def size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _trials(root: Path, name: Optional[str]) -> list:
    """The study's trials from the sweep's optuna.db; none without one (another --storage:
    run.json and the runs' locks decide)."""
    db = root / DB_FILE
    if not db.is_file() or not db.stat().st_size:
        return []
    import optuna

    url = f"sqlite:///{db}"
    try:
        names = optuna.get_all_study_names(url)
        study = name if name in names else (names[0] if len(names) == 1 else None)
        if study is None:
            raise UsageError(f"{db} holds studies {names}, none named {name!r}: nothing was pruned")
        return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    except UsageError:
        raise
    except Exception as e:  # damaged, another Optuna's schema: which runs live is not known
        raise UsageError(f"cannot read the sweep storage {db} ({type(e).__name__}): which runs are still "
                         "running is not known, so nothing was pruned") from None


def prune_dir(directory: str, keep: int, *, dry_run: bool, metric: Optional[str], goal: Optional[str]) -> int:
    """`python -m sweeps prune DIR --keep K [--dry-run]`."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise UsageError(f"{directory} is not a directory: give an offline sweep directory (sweep_runs/NAME) or a "
                         "folder of W&B agents' run directories (runs/EXPERIMENT, with --metric and --goal)")
    root, idle_s = root.resolve(), None
    if (root / "sweep.yaml").is_file():
        sweep = load_sweep(root / "sweep.yaml")
        goal = sweep.goal
        runs = sweep_runs(root, live_dirs(_trials(root, sweep.name), root))
    elif metric and goal:
        runs, idle_s = folder_runs(root, metric, goal), IDLE_S
    else:
        raise UsageError(f"{root} is not an offline sweep directory (no sweep.yaml); for a folder of W&B agents' run "
                         "directories give the sweep's --metric and --goal")
    if not runs:
        raise UsageError(f"{root} holds no run directories (runs/* of a sweep; */ or */*/ with config.yaml and "
                         f"{HISTORY_FILE} or {TRAINING_FILE})")
    pruned, best = prune_runs(root, runs, keep, goal, dry_run=dry_run, idle_s=idle_s)
    verb = "would remove" if dry_run else "removed"
    for path in pruned.removed:
        print(f"{verb} {path.relative_to(root)}")
    for path in pruned.stripped:
        print(f"{'would strip' if dry_run else 'stripped'} {path.relative_to(root)} (optimizer, scheduler, loop state)")
    for why in pruned.skipped:
        print(f"left alone: {why}")
    kept = ", ".join(f"{r.path.relative_to(root)} ({r.value:.4g})" for r in best) or "none"
    alone = sum(r.state not in ENDED for r in runs)
    print(f"kept the best {len(best)} run(s) (--keep {keep}): {kept}; {alone} run(s) left alone "
          f"(running, to be continued, or of unknown state)")
    print(f"{'would free' if dry_run else 'freed'} {size(pruned.freed)} ({pruned.freed} bytes)")
    return 0
