"""Progress of an offline sweep: one status line rewritten in place on a terminal, else (or
with --quiet for the live line) one log line per event, so logs of batch jobs stay readable."""

from __future__ import annotations

import shutil
import sys
from typing import Optional, TextIO

from optuna.trial import TrialState

from sweeps.runner.trials import ENDED
from sweeps.text import visible

STATES = (*ENDED, "running")


def tally(trials: list, goal: str) -> tuple[dict[str, int], Optional[tuple[float, dict, str]]]:
    """Runs by state (as the runner records them in user_attrs) and the best (value, params, run dir)."""
    counts, best = dict.fromkeys(STATES, 0), None
    for t in trials:
        state = t.user_attrs.get("state")
        if t.state == TrialState.RUNNING and state == "running":
            counts["running"] += 1
        elif state in ENDED and t.state.is_finished():
            counts[state] += 1
        if t.state == TrialState.COMPLETE and t.value is not None:
            if best is None or (t.value > best[0] if goal == "maximize" else t.value < best[0]):
                best = (t.value, t.user_attrs.get("params") or t.params, t.user_attrs.get("run_dir", ""))
    return counts, best


def format_params(params: dict, limit: int = 6) -> str:
    items = [f"{k}={v}" for k, v in list(params.items())[:limit]]
    more = len(params) - limit
    return " ".join(items) + (f" (+{more})" if more > 0 else "")


class Progress:
    def __init__(self, total: Optional[int], *, live: bool, stream: Optional[TextIO] = None) -> None:
        self.total, self.live, self.stream = total, live, stream or sys.stdout
        self.counts = dict.fromkeys(STATES, 0)
        self.best: Optional[tuple[float, dict, str]] = None
        self._line_open = False

    def event(self, text: str) -> None:
        self._clear()
        print(visible(text), file=self.stream, flush=True)
        self.draw()

    def update(self, counts: dict[str, int], best: Optional[tuple[float, dict, str]]) -> None:
        if counts != self.counts or best != self.best:
            self.counts, self.best = dict(counts), best
            self.draw()

    def status(self) -> str:
        c, total = self.counts, f"/{self.total}" if self.total else ""
        text = (f"done {sum(c[s] for s in ENDED)}{total} | running {c['running']} | stopped {c['stopped']} | "
                f"failed {c['failed']}")
        if self.best is not None:
            value, params, _ = self.best
            text += f" | best {value:.4g} {format_params(params, 3)}"
        return text

    def draw(self) -> None:
        if not self.live:
            return
        width = shutil.get_terminal_size((120, 20)).columns - 1
        self.stream.write("\r\033[K" + visible(self.status())[:width])
        self.stream.flush()
        self._line_open = True

    def _clear(self) -> None:
        if self._line_open:
            self.stream.write("\r\033[K")
            self._line_open = False

    def close(self) -> None:
        self._clear()
        self.stream.flush()
