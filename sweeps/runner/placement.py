"""Several runs per GPU (`--trials-per-gpu K`) and the memory guard (`--min-free-gpu-mem GB`):
a slot on a GPU is used only while that GPU has at least GB free.

Free memory is read with nvidia-smi, not torch.cuda.mem_get_info, which would create a CUDA
context (several hundred MB) in the runner on every GPU it asks about. nvidia-smi names GPUs
by PCI bus order and UUID; slots are CUDA names (indexes in CUDA's order, or UUIDs). The two
orders agree on the usual node of identical GPUs; elsewhere set CUDA_DEVICE_ORDER=PCI_BUS_ID
(or give UUIDs) so that they do.

A run allocates its memory during its first steps, so after a start the guard waits
`settle_s` before it lets another run start on that GPU; otherwise several starts in one
moment would all see the memory as free.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from typing import Optional

SETTLE_S = 30.0  # after a start on a GPU, before the next one there
READ_EVERY_S = 5.0  # nvidia-smi at most this often


def nvidia_smi_free_gb() -> dict[str, float]:
    """Free memory per GPU in GB (2**30 bytes), keyed by index and by UUID."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    free: dict[str, float] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            index, uuid, mib = parts
            free[index] = free[uuid] = float(mib) / 1024
    return free


class GpuMemoryGuard:
    """Says why no run may start on a slot now (or None); `started` records a start."""

    def __init__(self, min_free_gb: float, free_gb: Optional[Callable[[], dict[str, float]]] = None,
                 settle_s: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_free_gb, self.clock = min_free_gb, clock
        self.free_gb = free_gb or nvidia_smi_free_gb
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        self._started: dict[str, float] = {}
        self._read_at = -math.inf
        self._free: dict[str, float] = {}

    def _current(self) -> dict[str, float]:
        if self.clock() - self._read_at >= READ_EVERY_S:
            self._free, self._read_at = self.free_gb(), self.clock()
        return self._free

    def blocked(self, slot: Optional[str]) -> Optional[str]:
        if slot is None:
            return None
        gpus = slot.split(",")
        now = self.clock()
        for gpu in gpus:
            since = now - self._started.get(gpu, -math.inf)
            if since < self.settle_s:
                return f"GPU {gpu}: the run started there {since:.0f} s ago may still be allocating memory"
        free = self._current()
        for gpu in gpus:
            if gpu in free and free[gpu] < self.min_free_gb:
                return f"GPU {gpu} has {free[gpu]:.1f} GB free, below --min-free-gpu-mem {self.min_free_gb:g}"
        return None

    def started(self, slot: Optional[str]) -> None:
        if slot is None:
            return
        for gpu in slot.split(","):
            self._started[gpu] = self.clock()
        self._read_at = -math.inf  # read again: that run is using memory now
