"""What a run needs before its classes are built: readable config files, the precision for
this machine, and the built-in demo data set."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Optional

from training.options import DemoOptions

log = logging.getLogger("cli")


def check_config_files(args: list[str]) -> None:
    """Name the file when a --config is not valid YAML (jsonargparse only says where in it)."""
    import yaml

    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c") and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as e:
                raise ValueError(f"config file {value} is not valid YAML: {e}") from None


def default_precision(accelerator: object = "auto") -> str:
    """bf16 autocast on Ampere and later (compute capability >= 8.0: native bf16, no loss
    scaling), fp16 autocast on Volta/Turing (7.x: V100, T4 emulate bf16 slowly, which
    `torch.cuda.is_bf16_supported()` counts as support by default), full precision on older
    GPUs and the CPU. Decided without a CUDA context: `is_bf16_supported()`,
    `get_device_capability()` and friends initialise one (~0.5 GB) on the current device, in
    every DDP rank before Lightning sets its device and in a CV parent that trains nothing."""
    if str(accelerator) == "cpu":
        return "32-true"
    return precision_for(gpu_capability())


def precision_for(capability: Optional[tuple[int, int]]) -> str:
    if capability is None:
        return "32-true"
    return "bf16-mixed" if capability >= (8, 0) else "16-mixed" if capability >= (7, 0) else "32-true"


def gpu_capability() -> Optional[tuple[int, int]]:
    """Compute capability of the first GPU this process sees (the one a single-device run uses;
    DDP ranks see the same kind), or None without a GPU. From nvidia-smi (NVML underneath), or
    from torch when this process has a CUDA context already."""
    import torch

    if torch.cuda.is_initialized():
        return torch.cuda.get_device_capability()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible is not None else "0"
    if first in ("", "-1"):
        return None
    if first.startswith("MIG-"):
        return (8, 0)  # MIG exists on A100/A30/H100 and later only: all >= 8.0
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # no driver, hence no GPU to train on
    for line in out.splitlines():
        index, uuid, cap = (field.strip() for field in line.split(",")[:3])
        if first == index or (first.startswith("GPU-") and uuid.startswith(first)):
            try:
                major, minor = cap.split(".")
                return int(major), int(minor)
            except ValueError:
                log.warning("nvidia-smi reports compute capability %r for GPU %s: precision 32-true "
                            "(set --trainer.precision)", cap, first)
                return None
    return None


def ensure_demo_data(root: str, demo: DemoOptions, seed: int) -> None:
    """Generate the built-in demo data set into `root` unless it holds it already. A folder that
    holds anything else (other demo.* settings, someone's own data) stops the run with one error
    naming its synthetic.json and what differs; nothing is written over."""
    if demo.body_part is None:
        return
    from datamodules.records import DataError
    from datamodules.synthetic import generate

    try:
        generate(Path(root).expanduser(), body_part=demo.body_part, count=demo.count, size=(demo.size, demo.size),
                 seed=seed, severity=demo.severity)
    except DataError as e:
        raise DataError(f"{e} (the demo's settings are demo.*, its seed data.split_seed; demo.body_part=null "
                        "trains on data.root as it is)") from None
