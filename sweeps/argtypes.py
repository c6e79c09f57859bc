"""argparse types for the numeric options of `python -m sweeps`: a value is finite and in its
range when the command line is parsed, or argparse names the option and the allowed range
(`argument --seed: ...`) before anything is read, written or started."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Optional

from rundir.slots import MAX_RUNS_PER_DEVICE

SEED_MAX = 2**32 - 1  # numpy's RandomState, behind Optuna's samplers, takes seeds in [0, 2**32)


def number(kind: type, lo: float, hi: float, why: str = "", *, lo_open: bool = False) -> Callable[[str], float]:
    """A parser of `kind` (int or float) values in [lo, hi] ((lo, hi] with lo_open); `why` says
    where the bound comes from."""

    def parse(text: str):
        try:
            value = kind(text.strip())
        except (ValueError, OverflowError):
            value = math.nan  # fails the range test, as nan and inf given as floats do (hi is finite)
        if not ((lo < value if lo_open else lo <= value) and value <= hi):
            low = f"above {lo}" if lo_open else f"at least {lo}"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'} {low} and at most {hi}"
                + (f" ({why})" if why else ""))
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid <name> value" for other errors
    return parse


# The runner's options, one place for their ranges.
COUNT = number(int, 1, 1_000_000, "runs in the whole sweep")
WORKERS = number(int, 1, 1024, "parallel runs on this machine")
PER_GPU = number(int, 1, MAX_RUNS_PER_DEVICE)
MAX_FAILURES = number(int, 1, 1_000_000)
SEED = number(int, 0, SEED_MAX, "the samplers' random generators take 32-bit seeds")
HEARTBEAT_S = number(float, 0, 3600, "seconds; a runner is taken for dead after 3 missed beats", lo_open=True)
GPU_MEM_GB = number(float, 0, 4096, "GB", lo_open=True)
FOLDS = number(int, 2, 1000, "folds per trial")
NODES = number(int, 1, 1024, "nodes per trial")
TASKS = number(int, 1, 256, "processes per node")
GPUS_PER_TASK = number(int, 0, 64, "0: CPU")
CPUS = number(int, 1, 4096)
ARRAY = number(int, 1, 100_000, "array tasks; SLURM's own MaxArraySize may be lower")
KEEP = number(int, 0, 1_000_000, "finished runs whose best checkpoints are kept")


def keep_or_all(text: str) -> Optional[int]:
    """--keep-checkpoints: K, or `all` (no pruning: None)."""
    return None if text.strip().lower() == "all" else KEEP(text)


def sbatch_value(*, option: bool = False) -> Callable[[str], str]:
    """A value written into an `#SBATCH` line of the generated script: one line without control
    characters (a newline would end the directive and start a shell command), without spaces
    (sbatch reads a directive up to white space), an option (`--mem=64G`) where asked."""

    def parse(text: str) -> str:
        if not text or re.search(r"[\x00-\x20\x7f]", text) or (option and not text.startswith("-")):
            what = "an sbatch option such as --mem=64G" if option else "a value"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} on one line without spaces or control "
                                             "characters (it becomes an #SBATCH line of the script)")
        return text

    parse.__name__ = "sbatch value"
    return parse
