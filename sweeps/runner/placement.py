"""The memory guard, `--min-free-gpu-mem GB` (README, "Sweeps without a W&B server": Runs). Free
memory is read with nvidia-smi, not torch.cuda.mem_get_info, which would create a CUDA context
(several hundred MB) in the runner on every GPU it asks about. nvidia-smi names GPUs in PCI bus
order, slots are CUDA names: they agree on the usual node of identical GPUs; elsewhere set
CUDA_DEVICE_ORDER=PCI_BUS_ID (or give UUIDs). A run allocates its memory during its first steps, so
after a start the guard waits `settle_s` before the next start on that GPU. A failed read never ends
the sweep: no new run on that GPU for now, one warning, another read RETRY_S later.
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from collections.abc import Callable
from typing import Optional

log = logging.getLogger(__name__)

SETTLE_S = 30.0  # after a start on a GPU, before the next one there
READ_EVERY_S = 5.0  # nvidia-smi at most this often
PROBE_TIMEOUT_S = 15.0  # the runner's loop waits for nvidia-smi this long at most
RETRY_S = 60.0  # after a failed read, the next one


class GpuProbeError(subprocess.SubprocessError):
    """nvidia-smi did not answer, failed, or printed nothing readable."""


def nvidia_smi_free_gb() -> dict[str, float]:
    """Free memory per GPU in GB (2**30 bytes), keyed by index and by UUID. A GPU whose memory
    nvidia-smi does not report ([N/A]) is left out; no readable line at all is a GpuProbeError."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.free", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:  # not installed, not executable, timed out
        raise GpuProbeError(f"nvidia-smi: {e}") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise GpuProbeError(f"nvidia-smi exited with code {done.returncode}" + (f": {said[0][:200]}" if said else ""))
    rows = [[p.strip() for p in line.split(",")] for line in done.stdout.splitlines()]
    rows = [r for r in rows if len(r) == 3 and r[0].isdigit()]
    if not rows:
        raise GpuProbeError(f"nvidia-smi printed no GPU line: {done.stdout.strip()[:200]!r}")
    free: dict[str, float] = {}
    for index, uuid, mib in rows:
        try:
            gb = float(mib) / 1024
        except ValueError:  # [N/A], [Unknown Error], ...
            continue
        if math.isfinite(gb) and gb >= 0:
            free[index] = free[uuid] = gb
    return free


def free_of(free: dict[str, float], gpu: str) -> Optional[float]:
    """The free GB of a GPU named as CUDA names it (an index, a `GPU-<uuid>` or its unique prefix), or
    None when unknown (a `MIG-<uuid>` instance, an [N/A] reading, a GPU nvidia-smi does not list)."""
    if gpu in free:
        return free[gpu]
    if gpu.startswith("GPU-"):
        matches = [gb for key, gb in free.items() if key.startswith(gpu)]
        if len(matches) == 1:
            return matches[0]
    return None


def check_slots(slots: list[Optional[str]]) -> None:
    """Raise GpuProbeError unless nvidia-smi reports the free memory of every GPU of every slot."""
    free = nvidia_smi_free_gb()
    unknown = sorted({g for slot in slots if slot for g in slot.split(",") if free_of(free, g) is None})
    if unknown:
        mig = " (MIG instances: nvidia-smi reports the free memory of whole GPUs only)" \
            if any(g.startswith("MIG-") for g in unknown) else ""
        raise GpuProbeError(f"it reports no free memory for GPU(s) {', '.join(unknown)}{mig}; "
                            "leave --min-free-gpu-mem out for them")


class GpuMemoryGuard:
    """Says why no run may start on a slot now (or None); `started` records a start. Never
    raises: an unreadable GPU is one to wait for."""

    def __init__(self, min_free_gb: float, free_gb: Optional[Callable[[], dict[str, float]]] = None,
                 settle_s: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(min_free_gb) and min_free_gb > 0):  # nan would compare False: no GPU ever full
            raise ValueError(f"--min-free-gpu-mem must be a positive number of GB, got {min_free_gb}")
        self.min_free_gb, self.clock = min_free_gb, clock
        self.free_gb = free_gb or nvidia_smi_free_gb
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        self._started: dict[str, float] = {}
        self._read_at = -math.inf
        self._free: dict[str, float] = {}
        self._failure: Optional[str] = None  # why the last read failed
        self._noted = False  # an unknown reading was reported: one warning until nvidia-smi answers again

    def _current(self) -> dict[str, float]:
        now = self.clock()
        if now - self._read_at >= (RETRY_S if self._failure else READ_EVERY_S):
            self._read_at = now
            try:
                self._free = self.free_gb()
                if self._failure:
                    log.warning("GPU memory guard: nvidia-smi answers again")
                    self._noted = False
                self._failure = None
            except Exception as e:  # whatever the probe does, the runs already going must go on
                if not self._noted:
                    self._noted = True
                    log.warning("GPU memory guard: cannot read the GPUs' free memory (%s: %s); no new run starts on a "
                                "GPU until nvidia-smi answers (tried again every %g s); runs already going are not "
                                "touched", type(e).__name__, e, RETRY_S)
                self._free, self._failure = {}, f"{type(e).__name__}: {e}"
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
            gb = free_of(free, gpu)
            if gb is None:
                if not self._noted:  # read, but without this GPU ([N/A])
                    self._noted = True
                    log.warning("GPU memory guard: nvidia-smi reports no free memory for GPU %s; no new run starts "
                                "there until it does (runs already going are not touched)", gpu)
                why = self._failure or "nvidia-smi does not report its free memory"
                return f"GPU {gpu}: free memory unknown ({why})"
            if gb < self.min_free_gb:
                return f"GPU {gpu} has {gb:.1f} GB free, below --min-free-gpu-mem {self.min_free_gb:g}"
        return None

    def started(self, slot: Optional[str]) -> None:
        if slot is None:
            return
        for gpu in slot.split(","):
            self._started[gpu] = self.clock()
        self._read_at = -math.inf  # read again: that run is using memory now
