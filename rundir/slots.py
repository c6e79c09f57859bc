"""Slots (a CUDA_VISIBLE_DEVICES value each, or None for the CPU) for the runner's trials and the
CV parent's folds, and the precision a run's GPU trains at. GPUs are asked with `nvidia-smi`, never
torch.cuda: a launcher that trains nothing must not create a CUDA context (README, "Several GPUs")."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Optional

GPU_SLOT_ENV = "XRAY_GPU_SLOT"  # set next to CUDA_VISIBLE_DEVICES when a launcher gives a run a GPU
PROBE_TIMEOUT_S = 30.0
MAX_RUNS_PER_DEVICE = 64  # cv.folds_per_device, --trials-per-gpu: each run holds its own memory on the device

log = logging.getLogger("cli")


class SlotError(ValueError):
    """GPUs asked for that this machine does not have; one line naming the option."""


def nvidia_smi_gpus() -> list[str]:
    """The indexes of this machine's GPUs, as `nvidia-smi -L` lists them ("GPU 0: ..."; MIG
    devices are indented lines under their GPU). No nvidia-smi (no NVIDIA driver) is no GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except FileNotFoundError:
        return []
    except (OSError, subprocess.SubprocessError) as e:
        raise SlotError(f"cannot count the GPUs: `nvidia-smi -L` failed ({type(e).__name__}: {e})") from None
    if out.returncode != 0:
        return []  # the driver is not loaded: CUDA sees no GPU either
    return [line.split(":", 1)[0][4:].strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


probe: Callable[[], list[str]] = nvidia_smi_gpus  # tests replace it with a fake machine


def inherited_gpus() -> Optional[list[str]]:
    """CUDA_VISIBLE_DEVICES (None when unset; schedulers set it to the allocation) as CUDA reads it
    (the rules torch.cuda._parse_visible_devices mirrors): indexes read like strtoul ("1abc" is 1),
    `GPU-` and `MIG-` ids; the first entry that is none of these (-1, NoDevFiles, an empty one)
    ends the list; a repeated entry leaves none."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    ids: list[str] = []
    for item in (g.strip() for g in value.split(",")):
        digits = re.match(r"\+?(\d+)", item)
        if item.startswith(("GPU-", "MIG-")):
            name = item
        elif digits:
            name = str(int(digits.group(1)))
        else:
            break
        if name in ids:
            return []
        ids.append(name)
    return ids


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as CUDA names them to a child."""
    inherited = inherited_gpus()
    return inherited if inherited is not None else probe()


def pick_gpus(wanted: list[int], option: str) -> list[str]:
    """GPUs by index into the visible ones: under an inherited CUDA_VISIBLE_DEVICES=2,3 index 0
    is physical GPU 2, never a GPU outside the allocation; an index that no GPU has is refused
    here, before anything starts (CUDA would hide the GPU and the run train on the CPU)."""
    visible = visible_gpus()
    bad = [i for i in wanted if not 0 <= i < len(visible)]
    if bad:
        where = (f"the {len(visible)} GPU(s) of CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
                 if inherited_gpus() is not None else f"the {len(visible)} GPU(s) `nvidia-smi -L` lists")
        raise SlotError(f"{option}: GPU index(es) {bad} outside {where}"
                        + ("; leave it out to run on the CPU" if not visible else f" (0..{len(visible) - 1})"))
    return [visible[i] for i in wanted]


def device_slots(ids: list[str], per_run: int, runs_per_device: int,
                 limit: Optional[int]) -> list[Optional[str]]:
    """Groups of `per_run` GPUs, each repeated `runs_per_device` times (several small runs
    share a GPU), interleaved so that the first runs spread over the GPUs."""
    groups = [ids[i : i + per_run] for i in range(0, len(ids) - per_run + 1, per_run)]
    if not groups:  # only the runner asks for more than one GPU per run
        raise SlotError(f"--gpus-per-trial {per_run} is more than the {len(ids)} GPU(s) given")
    slots = [",".join(g) for _ in range(max(1, runs_per_device)) for g in groups]
    return slots[:limit] if limit else slots


def gpu_slots(gpus: Optional[str], gpus_per_trial: int, workers: Optional[int],
              trials_per_gpu: int = 1) -> list[Optional[str]]:
    """The offline runner's and the W&B agents' slots: `--gpus 0,1` indexes into the visible
    GPUs; without it every visible GPU; none: `workers` CPU slots."""
    if gpus:
        try:
            wanted = [int(g) for g in gpus.split(",") if g.strip()]
        except ValueError:
            raise SlotError(f"--gpus {gpus!r}: give indexes such as 0,1 into the visible GPUs") from None
        ids = pick_gpus(wanted, f"--gpus {gpus}")
    else:
        ids = visible_gpus()
    if not ids:
        return [None] * max(1, workers or 1)
    return device_slots(ids, gpus_per_trial, trials_per_gpu, workers)


def fold_slots(accelerator: Any, devices: Any, folds_per_device: int, folds: int) -> list[Optional[str]]:
    """A cross-validated run's slots: one GPU per fold (trainer.devices: a count, a list of
    indexes, auto/-1 for all), `folds_per_device` folds on each; on the CPU, that many
    processes per device. Never more slots than folds."""
    every = devices in ("auto", -1, "-1", None)
    gpu = str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and bool(visible_gpus()))
    if gpu:
        visible = visible_gpus()
        if isinstance(devices, (list, tuple)):
            ids = pick_gpus([int(i) for i in devices], f"trainer.devices={list(devices)}")
        else:
            ids = visible if every else visible[: int(devices)]
        if not ids:
            raise SlotError(f"trainer.accelerator={accelerator}: no GPU visible (`nvidia-smi -L`, "
                            "CUDA_VISIBLE_DEVICES); use --trainer.accelerator=cpu")
        return device_slots(ids, 1, folds_per_device, folds)
    count = 1 if every else len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    return [None] * max(1, min(folds, count * max(1, folds_per_device)))


def cpu_threads(slots: list[Optional[str]]) -> Optional[str]:
    """OMP_NUM_THREADS for each of several runs that share the CPU (no GPU slots): the cores
    split between them, since N runs that each start one thread per core slow each other down
    (on two cores `make demo` took 2.4 minutes as two runs of one thread each, 3.2 minutes as
    one run of two threads at a time). None: leave the variable as it is."""
    if "OMP_NUM_THREADS" in os.environ or len(slots) < 2 or any(s is not None for s in slots):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return str(max(1, cores // len(slots)))


def check_gpu_slot() -> None:
    """In a run: a launcher gave it a GPU (GPU_SLOT_ENV) and it sees none, so it fails now
    rather than train on the CPU. torch.cuda.device_count() asks NVML first and creates no CUDA
    context (torch/cuda/__init__.py, device_count -> _device_count_nvml); it is what Lightning's
    accelerator "auto" asks too (lightning/fabric/accelerators/cuda.py, num_cuda_devices)."""
    slot = os.environ.get(GPU_SLOT_ENV)
    if not slot:
        return
    import torch

    if torch.cuda.device_count() == 0:
        raise SlotError(f"this run was given GPU {slot} (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}) but sees no GPU: that GPU does not exist "
                        "here, or the driver is not loaded (check `nvidia-smi -L`); it would train on the CPU")


def default_precision(accelerator: object = "auto") -> str:
    """`fit`'s precision unless --trainer.precision is given (benchmarks compare at it): bf16 from
    compute capability 8.0 (native, no loss scaling), fp16 on 7.x (V100 and T4 emulate bf16 slowly,
    which `torch.cuda.is_bf16_supported()` counts as support by default), else full precision."""
    capability = None if str(accelerator) == "cpu" else gpu_capability()
    return "32-true" if capability is None else "bf16-mixed" if capability >= (8, 0) else \
        "16-mixed" if capability >= (7, 0) else "32-true"


def gpu_capability() -> Optional[tuple[int, int]]:
    """Compute capability of the first GPU this process sees (DDP ranks see the same kind), or None.
    From nvidia-smi unless this process has a CUDA context already: `is_bf16_supported()`,
    `get_device_capability()` and friends create one (~0.5 GB) on the current device, in every
    DDP rank before Lightning sets its device and in a CV parent that trains nothing."""
    torch = sys.modules.get("torch")  # not imported: no CUDA context either
    if torch is not None and torch.cuda.is_initialized():
        return torch.cuda.get_device_capability()
    inherited = inherited_gpus()
    first = "0" if inherited is None else inherited[0] if inherited else None
    if first is None:
        return None
    if first.startswith("MIG-"):
        return (8, 0)  # MIG exists on A100/A30/H100 and later only: all >= 8.0
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True).stdout
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
