"""What `test` and `predict` read from finished runs (a checkpoint, a cross-validated run's
cv.json), checked before any of it is used (README "Cross-validated trials")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from rundir.layout import CV_FILE, PREDICTIONS_FILE, fold_dir
from training.operating_point import OperatingPoint, read_checkpoint
from training.writers import write_predictions

# Options of the model whose change changes the weights' shapes (the others leave them alone).
SHAPING = ("backbone", "num_classes", "weights")


def check_weights_fit(model: torch.nn.Module, ckpt_path: Optional[str]) -> None:
    """One paragraph instead of torch's list of every missing weight (kilobytes of names)."""
    checkpoint = read_checkpoint(ckpt_path)
    if checkpoint is None:
        return
    saved = checkpoint.get("state_dict") or {}
    ours = model.state_dict()
    missing = [k for k in ours if k not in saved]
    unexpected = [k for k in saved if k not in ours]
    reshaped = [k for k in ours if k in saved and tuple(saved[k].shape) != tuple(ours[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    trained = checkpoint.get("hyper_parameters") or {}
    differ = [f"model.{k}={trained[k]} there, {model.hparams.get(k)} here" for k in SHAPING
              if k in trained and trained[k] != model.hparams.get(k)]
    example = (missing or unexpected or reshaped)[0]
    raise ValueError(
        f"checkpoint {ckpt_path} does not fit the model of this command ({len(missing)} weights missing, "
        f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. {example!r})"
        + (f"; it was trained with {'; '.join(differ)}" if differ else "")
        + ": give the model options it was trained with (its run's config.yaml)")


def read_cv_run(run_dir: Path, model: Optional[torch.nn.Module] = None) -> tuple[OperatingPoint, list[Path]]:
    """The operating point and fold checkpoints of a finished cross-validated run (each checked
    to fit `model` when given), or ValueError in one line. Entry i must lie in the run's own
    fold_i/ (never another run's models)."""
    source = run_dir / CV_FILE
    try:
        saved = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cv.run_dir {run_dir} is not a finished cross-validated run (no readable {CV_FILE}: "
                         f"{e})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("operating_point"), dict) \
            or not isinstance(saved.get("checkpoints"), list) or not isinstance(saved.get("folds"), int):
        raise ValueError(f"{source} is damaged: it must be an object with 'folds' (a number), 'operating_point' "
                         "(an object) and 'checkpoints' (a list), as a cross-validated fit writes it")
    try:
        point = OperatingPoint.from_dict(saved["operating_point"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: 'operating_point' is damaged ({type(e).__name__}: {e})") from None
    entries, folds = saved["checkpoints"], saved["folds"]
    if len(entries) != folds or folds < 2:
        raise ValueError(f"{source} names {len(entries)} checkpoint(s) for {folds} folds")
    paths = []
    for i, entry in enumerate(entries):
        own = fold_dir(run_dir, i).resolve()
        path = (run_dir / str(entry)).resolve()
        if not isinstance(entry, str) or Path(entry).is_absolute() or not path.is_relative_to(own):
            raise ValueError(f"{source}: checkpoint {i} is {entry!r}; only a file in this run's own "
                             f"{own.name}/ is allowed")
        if not path.is_file():
            raise ValueError(f"{source}: the checkpoint of fold {i} ({entry}) is missing: the ensemble needs "
                             "every fold; no predictions were written")
        paths.append(path)
    for path in paths if model is not None else ():
        check_weights_fit(model, str(path))
    return point, paths


def predict_with_ensemble(cli, run_dir: Path) -> OperatingPoint:
    """`predict --cv.run_dir DIR`: the mean of the folds' probabilities at the CV run's operating
    point; predictions.csv is written only when every fold has predicted."""
    point, checkpoints = read_cv_run(Path(run_dir), cli.model)
    probs, index = [], None
    for ckpt in checkpoints:
        batches = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt),
                                      return_predictions=True)
        index = np.concatenate([b["index"].cpu().numpy() for b in batches])
        probs.append(point.probabilities(np.concatenate([b["logits"].float().cpu().numpy() for b in batches])))
    records = cli.datamodule.records_of("predict")
    rows = [(records[i].rel, records[i].label, p) for i, p in zip(index, np.mean(probs, axis=0))]
    write_predictions(cli.run_dir / PREDICTIONS_FILE, rows, cli.model.class_names, point)
    return point
