"""Reading what a run left: can its checkpoint be continued from (and is it the same model), why
did it fail. Used by the CLI (`fit --ckpt_path`), the CV parent and the offline runner."""

from __future__ import annotations

import logging
import signal
import zipfile
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("cli")


def checkpoint_problem(ckpt_path: str | Path, *, load: bool = True) -> Optional[str]:
    """Why a checkpoint cannot be resumed from (missing, truncated, corrupt), or None.
    torch.save writes a zip archive with a CRC per entry: the archive is checked whole, which
    needs no torch (the runner stops there, `load=False`); then it is loaded memory-mapped
    (tensors are not read), as Lightning will load it."""
    text = str(ckpt_path)
    if text in ("last", "best", "hpc") or text.startswith("registry"):
        return None  # ckpt_path values Lightning resolves itself
    path = Path(text).expanduser()
    if path.is_dir():
        return None  # a sharded checkpoint (FSDP, DeepSpeed): Lightning's own to check
    if not path.is_file():
        return f"{path} does not exist"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"{path}: entry {bad} is corrupt"
        if load:
            import torch

            torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # any reason means the same: this file cannot be resumed from
        return f"{path}: {type(e).__name__}: {e}"
    return None


def failure_reason(log: Path, code: int) -> str:
    """Why a run failed, from its output.log: the `error:` line cli.py prints, else the last
    line of a traceback, else the exit code or signal."""
    try:
        lines = [ln.rstrip() for ln in Path(log).read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    tb = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if tb:
        tail = [ln for ln in lines[tb[-1] + 1:] if ln and not ln.startswith((" ", "\t"))]
        if tail:
            return tail[-1]
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"


# Not compared when a run continues: linked from the data module (not part of the command), or
# without effect on what is trained (where initial weights came from, memory format, compiling).
NOT_COMPARED = ("num_classes", "class_names", "class_weights", "weights", "channels_last", "compile")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_same_model(ckpt_path: str | Path, model: dict) -> None:
    """A run continued from a checkpoint must be the same model: LightningCLI would otherwise
    take the checkpoint's hyperparameters over the command's, silently (lightning/pytorch/cli.py,
    LightningCLI._parse_ckpt_path), and the run's history would mix two models. Raises one
    ValueError naming every differing model.* option. A checkpoint of weights only (pruned,
    README "Keeping the disk small") cannot be continued: Lightning would fail with a KeyError."""
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        return  # a name Lightning resolves, or a sharded checkpoint: not ours to read
    import torch

    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    saved = checkpoint.get("hyper_parameters") or {}
    differ = [f"model.{key}={saved[key]!r} in the checkpoint, {value!r} in this command"
              for key, value in model.items()
              if key in saved and key not in NOT_COMPARED and not key.startswith("_") and _plain(saved[key]) != _plain(value)]
    if differ:
        raise ValueError(f"checkpoint {path} was trained with other settings than this command's ({'; '.join(differ)}): "
                         "continue it with the settings it was trained with, or start a new run without --ckpt_path")
    if "state_dict" in checkpoint and "optimizer_states" not in checkpoint:
        raise ValueError(f"checkpoint {path} holds weights only (no optimizer state: pruned, or saved weights-only), "
                         f"so training cannot continue from it; start a new run from its weights with --model.weights={path}")


def continue_from(ckpt_path: str, model: dict) -> Optional[str]:
    """`fit --ckpt_path`: the checkpoint to continue from; None when it cannot be read, so that
    training starts over, saying so (every DDP rank decides the same, from the same file and argv)."""
    problem = checkpoint_problem(ckpt_path)
    if problem is not None:
        log.warning("cannot resume from the checkpoint (%s): training starts over from epoch 0", problem)
        return None
    check_same_model(ckpt_path, model)
    return ckpt_path
