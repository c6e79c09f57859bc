"""A training program that replays LCBench learning curves, launched by the runner as it launches cli.py:

    python benchmarks/lcbench/surrogate_cli.py fit --config benchmarks/lcbench/lcbench.yaml \
        --sweep.metric=val/balanced_acc --model.lr=0.01 --data.batch_size=64 ... [--lcbench.task=3945]

It keeps cli.py's run contract (benchmarks/README.md, "LCBench"): one history row per validation
epoch in $XRAY_RUN_DIR/sweep_history.jsonl, training.json, exit 0 when stopped by SIGTERM or by
the runner's lifeline, `error:` and exit 2 for bad input. Each epoch takes the surrogate's epoch
time scaled down: `--lcbench.minute_s` wall seconds per simulated minute (default 0.1).
Options (`lcbench.*`, in the config or the sweep): task (OpenML id), surrogate (lcbench | toy),
minute_s, num_layers, max_units; epochs come from trainer.max_epochs (at most 52).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The run layout and the in-run contract, imported here only (the names may move package).
from sweeps.contract.history import (  # noqa: E402
    HISTORY_FILE,
    TRAINING_FILE,
    append_history,
    truncate_history,
    write_training,
)
from sweeps.contract.lifeline import watch_runner  # noqa: E402
from sweeps.contract.signals import StopSignal  # noqa: E402

StopSignal.install()  # before numpy/onnxruntime load: a stop may come at once

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

TEST_FILE = "lcbench_test.json"  # the test metrics of the last epoch trained (reported, never optimized)
METRICS = {"val/acc": 1, "val/loss": 2, "val/balanced_acc": 3}  # -> column of surrogate.Y_NAMES


class UsageError(Exception):
    pass


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in (data or {}).items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse(argv: list[str]) -> dict:
    """`fit --config F ... --a.b=v`: configs and arguments applied left to right, as jsonargparse does."""
    if not argv or argv[0] != "fit":
        raise UsageError(f"the first argument must be `fit`, got {argv[:1]}")
    options: dict = {}
    items = iter(argv[1:])
    for item in items:
        if item == "--config" or item.startswith("--config="):
            path = item.split("=", 1)[1] if "=" in item else next(items, None)
            try:
                options.update(_flatten(yaml.safe_load(Path(path).read_text())))
            except (OSError, TypeError, yaml.YAMLError) as e:
                raise UsageError(f"--config {path}: cannot read it ({e})") from None
        elif item.startswith("--") and "=" in item:
            key, value = item[2:].split("=", 1)
            options[key] = yaml.safe_load(value)  # as jsonargparse parses a value: 1e-3 a float, null None
        else:
            raise UsageError(f"unexpected argument {item!r}; give --name=value")
    return options


def main(argv: list[str]) -> int:
    watch_runner()
    try:
        options = parse(argv)
        metric = options.get("sweep.metric", "val/balanced_acc")
        if metric not in METRICS:
            raise UsageError(f"--sweep.metric={metric}: the surrogate logs {', '.join(METRICS)}")
        epochs = int(options.get("trainer.max_epochs", 52))
        minute_s = float(options.get("lcbench.minute_s", 0.1))
        kind = str(options.get("lcbench.surrogate", "lcbench"))
        if not 1 <= epochs <= 52:
            raise UsageError(f"trainer.max_epochs={epochs}: LCBench has epochs 1..52")
        if minute_s < 0:
            raise UsageError(f"lcbench.minute_s={minute_s}: must be >= 0")
        from benchmarks.lcbench import surrogate

        if kind not in surrogate.SURROGATES:
            raise UsageError(f"lcbench.surrogate={kind}: choose from {', '.join(surrogate.SURROGATES)}")
        config = surrogate.lcbench_config(options)
        curve = surrogate.SURROGATES[kind](str(options.get("lcbench.task", "3945")), [config], epochs)[0]
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e.name} is missing: pip install -e '.[bench]' (or --lcbench.surrogate=toy)", file=sys.stderr)
        return 2
    run_dir = Path(os.environ.get("XRAY_RUN_DIR") or "runs/lcbench")
    run_dir.mkdir(parents=True, exist_ok=True)
    history = run_dir / HISTORY_FILE
    truncate_history(history, 0)  # no checkpoint: a continued run trains again from the start
    write_training(run_dir / TRAINING_FILE, epochs, done=False)
    elapsed = 0.0
    for epoch in range(epochs):
        end = time.monotonic() + max(0.0, float(curve[epoch, 0]) - elapsed) / 60 * minute_s
        while not StopSignal.requested and time.monotonic() < end:
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        if StopSignal.requested:
            print(f"stopped ({StopSignal.reason}) in epoch {epoch}")
            return 0
        elapsed = float(curve[epoch, 0])
        row = {"epoch": epoch, "time_s": round(elapsed, 3)}
        row.update({name: float(curve[epoch, col]) / (100 if name == "val/acc" else 1) for name, col in METRICS.items()})
        append_history(history, row)
    write_training(run_dir / TRAINING_FILE, epochs, done=True)
    test = {"epoch": epochs - 1, "test/balanced_acc": float(curve[-1, 5]), "test/loss": float(curve[-1, 4])}
    (run_dir / TEST_FILE).write_text(json.dumps(test))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
