"""LCBench learning curves from YAHPO Gym's surrogate (yahpo/lcbench/, see yahpo/README.md), read with
onnxruntime alone, plus an analytic stand-in (`toy`) for the fast test.

Why not `yahpo_gym` itself: yahpo-gym 1.0.2 pins ConfigSpace<=0.6.1, which pins numpy<2 (pip
would downgrade the project's numpy 2.x). Its whole use of the model is ~20 lines
(yahpo_gym/benchmark_set.py, `_config_to_xs` and `objective_function`): the task id
integer-encoded through encoding.json as `x_cat` (int32, shape [n, 1]) and the eight numbers of
`CONT` as `x_cont` (float32, [n, 8]), raw values (the network scales them itself). Outputs, in
`Y_NAMES` order: cumulative training time (s), validation accuracy (%), validation
cross-entropy, validation balanced accuracy, test cross-entropy, test balanced accuracy.

The sweep speaks the project's parameter names; `PARAMS` maps them onto LCBench's.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "yahpo" / "lcbench"
MAX_EPOCHS = 52  # LCBench's fidelity: epochs 1..52
Y_NAMES = ("time", "val_accuracy", "val_cross_entropy", "val_balanced_accuracy", "test_cross_entropy",
           "test_balanced_accuracy")
CONT = ("epoch", "batch_size", "learning_rate", "momentum", "weight_decay", "num_layers", "max_units", "max_dropout")
# Project (sweep) parameter name -> LCBench name. num_layers and max_units have no counterpart in
# the X-ray model: they are the benchmark's own options (`lcbench.*`), as are the instance and clock.
PARAMS = {
    "model.lr": "learning_rate",
    "data.batch_size": "batch_size",
    "model.momentum": "momentum",
    "model.weight_decay": "weight_decay",
    "model.dropout": "max_dropout",
    "lcbench.num_layers": "num_layers",
    "lcbench.max_units": "max_units",
}
# LCBench's search space (config_space.json) in W&B's schema, under the project's names.
SPACE = {
    "model.lr": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 1.0e-1},
    "data.batch_size": {"distribution": "q_log_uniform_values", "min": 16, "max": 512, "q": 1},
    "model.momentum": {"distribution": "uniform", "min": 0.1, "max": 0.99},
    "model.weight_decay": {"distribution": "uniform", "min": 1.0e-5, "max": 1.0e-1},
    "model.dropout": {"distribution": "uniform", "min": 0.0, "max": 1.0},
    "lcbench.num_layers": {"distribution": "int_uniform", "min": 1, "max": 5},
    "lcbench.max_units": {"distribution": "q_log_uniform_values", "min": 64, "max": 1024, "q": 1},
}
DEFAULTS = {"batch_size": 91, "learning_rate": 0.0031622777, "momentum": 0.545, "weight_decay": 0.050005,
            "num_layers": 3, "max_units": 256, "max_dropout": 0.5}


def instances() -> list[str]:
    """The 34 OpenML task ids the surrogate knows."""
    space = json.loads((DATA_DIR / "config_space.json").read_text())
    return next(h["choices"] for h in space["hyperparameters"] if h["name"] == "OpenML_task_id")


def encode_task(task: str) -> int:
    """The surrogate's integer code of an OpenML task id; a ValueError naming the choices otherwise."""
    code = json.loads((DATA_DIR / "encoding.json").read_text())["OpenML_task_id"].get(str(task))
    if code is None or str(task) == "#na#":
        raise ValueError(f"lcbench.task {task!r} is not an LCBench instance; choose from {', '.join(instances())}")
    return code


def lcbench_config(params: dict) -> dict:
    """LCBench's configuration from sweep parameters (project names); missing ones at LCBench's defaults."""
    config = dict(DEFAULTS)
    config.update({PARAMS[k]: v for k, v in params.items() if k in PARAMS})
    return config


@lru_cache(maxsize=1)
def _session():
    import onnxruntime as rt

    options = rt.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # the box is shared; batches are small
    return rt.InferenceSession(str(DATA_DIR / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"])


def curves(task: str, configs: list[dict], epochs: int = MAX_EPOCHS) -> np.ndarray:
    """[len(configs), epochs, 6]: the surrogate's prediction after epochs 1..epochs, Y_NAMES order."""
    code = encode_task(task)
    rows = [[e, *(float(c[name]) for name in CONT[1:])] for c in configs for e in range(1, epochs + 1)]
    x_cont = np.asarray(rows, dtype=np.float32)
    x_cat = np.full((len(rows), 1), code, dtype=np.int32)
    session = _session()
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, {names[0]: x_cat, names[1]: x_cont})[0]
    return out.reshape(len(configs), epochs, len(Y_NAMES))


def toy_curves(task: str, configs: list[dict], epochs: int = MAX_EPOCHS) -> np.ndarray:
    """An analytic stand-in with LCBench's outputs (no onnxruntime): balanced accuracy rises to a
    plateau that is best at learning_rate 0.01 and little dropout; larger networks train slower."""
    encode_task(task)  # the same instances as the model (the curve does not depend on them)
    out = np.zeros((len(configs), epochs, len(Y_NAMES)))
    e = np.arange(1, epochs + 1)
    for i, c in enumerate(configs):
        top = 0.95 - 0.08 * math.log10(c["learning_rate"] / 1e-2) ** 2 - 0.1 * c["max_dropout"]
        rate = 0.05 + 0.2 * c["learning_rate"] ** 0.5
        bal = 0.5 + (top - 0.5) * (1 - np.exp(-rate * e))
        epoch_s = 60.0 * (0.5 + c["num_layers"] * c["max_units"] / 5120)  # 0.5 to 1.5 simulated minutes
        out[i, :, 0] = epoch_s * e
        out[i, :, 1] = 100 * bal
        out[i, :, 2] = out[i, :, 4] = 1 - bal
        out[i, :, 3] = bal
        out[i, :, 5] = bal - 0.01
    return out


SURROGATES = {"lcbench": curves, "toy": toy_curves}
