"""Why a run failed, in words that name no file (README, "Privacy"; the masking: sweeps/text.py)."""

from __future__ import annotations

from pathlib import Path

from rundir.records import failure_reason as reason_in_log
from sweeps.text import mask_file_names


def failure_reason(log: Path, code: int) -> str:
    """Why a run failed (from its output.log and exit status), every file name or path replaced by
    <path>; metric names such as val/auroc stay."""
    return mask_file_names(reason_in_log(log, code))
