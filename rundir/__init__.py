"""The run directory and the one launcher (README, "Architecture"): no project import, no torch on
import. Its users import from the modules; the package re-exports what the CLI takes."""

from rundir.create import run_dir_for
from rundir.grace import CHILD_STOP_S
from rundir.layout import RUN_DIR_ENV
from rundir.records import continue_from
from rundir.slots import check_gpu_slot, default_precision, fold_slots

__all__ = [
    "CHILD_STOP_S",
    "RUN_DIR_ENV",
    "check_gpu_slot",
    "continue_from",
    "default_precision",
    "fold_slots",
    "run_dir_for",
]
