"""A callback for benchmarks/runner_overhead.py: when the process started, when the first
training step began and when the run tore down, written to <run dir>/timing.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
from lightning.pytorch.callbacks import Callback


class FirstStep(Callback):
    def __init__(self) -> None:
        self.times = {"process_start": psutil.Process().create_time()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.times.setdefault("first_step", time.time())

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.times["teardown"] = time.time()
        if trainer.is_global_zero:
            Path(trainer.default_root_dir, "timing.json").write_text(json.dumps(self.times))
