"""The run directory and the one launcher, shared by training and the sweep orchestration; imports
nothing of the project and no torch on import (README, "Architecture")."""

from rundir.atomic import replacing, write_atomic
from rundir.create import adopt_run_dir, run_dir_for
from rundir.grace import AGENT_KILL_AFTER_S, CHILD_STOP_S, FINISH_GRACE_S, HARD_STOP_S
from rundir.launcher import Launched, child_env, start, stop_all
from rundir.layout import RUN_DIR_ENV, fold_dir
from rundir.records import check_same_model, checkpoint_problem, continue_from, failure_reason
from rundir.slots import check_gpu_slot, cpu_threads, default_precision, fold_slots, gpu_slots, visible_gpus

__all__ = [
    "AGENT_KILL_AFTER_S",
    "CHILD_STOP_S",
    "FINISH_GRACE_S",
    "HARD_STOP_S",
    "Launched",
    "RUN_DIR_ENV",
    "adopt_run_dir",
    "check_gpu_slot",
    "check_same_model",
    "checkpoint_problem",
    "child_env",
    "continue_from",
    "cpu_threads",
    "default_precision",
    "failure_reason",
    "fold_dir",
    "fold_slots",
    "gpu_slots",
    "replacing",
    "run_dir_for",
    "start",
    "stop_all",
    "visible_gpus",
    "write_atomic",
]
