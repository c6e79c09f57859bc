"""The best run's model card, rewritten by `python -m sweeps report` with what only the sweep knows:
which sweep chose the configuration and out of how many trials (README "Model card")."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from evaluation.model_card import CARD_FILE, model_card_text
from rundir.atomic import write_atomic
from rundir.layout import COMPLETED, CONFIG_FILE, TEST_REPORT
from sweeps.analysis.results import best_run, load_offline_runs


def write_best_model_card(sweep_dir: Path) -> Optional[Path]:
    """model_card.md beside the best run's test_report.json; None when no run has one."""
    sweep, runs = load_offline_runs(sweep_dir)
    best = best_run(sweep, runs)
    if best is None or not best.get("run_dir") or not (Path(sweep_dir) / best["run_dir"] / TEST_REPORT).is_file():
        return None
    run_dir = Path(sweep_dir) / best["run_dir"]
    facts = {"name": sweep.name or Path(sweep_dir).name, "method": sweep.method, "metric": sweep.metric,
             "trials": len(runs), "completed": sum(r["state"] in COMPLETED for r in runs)}
    config = run_dir / CONFIG_FILE
    text = model_card_text((run_dir / TEST_REPORT).read_text(), config.read_text() if config.is_file() else None,
                           facts["name"], facts)
    write_atomic(run_dir / CARD_FILE, text)
    return run_dir / CARD_FILE
