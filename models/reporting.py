"""Files a run leaves next to its checkpoints: confusion matrices and predictions.

Paths written here are relative to the data root: nothing else about where patient images
live leaves the machine.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import WandbLogger

from datamodules.csvsafe import spreadsheet_safe
from models.classifier import write_confusion_csv


class ConfusionWriter(Callback):
    """confusion_val.csv after every validation (the last one stays). The test confusion matrix,
    at the operating point chosen on validation, comes with the test report."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        outputs = getattr(pl_module, "epoch_outputs", {}).get("val")
        if trainer.sanity_checking or outputs is None or not trainer.is_global_zero:
            return
        classes = len(pl_module.class_names)
        predicted = outputs["logits"].argmax(axis=1)
        confusion = torch.zeros(classes, classes, dtype=torch.long)
        confusion.index_put_((torch.as_tensor(outputs["labels"]), torch.as_tensor(predicted)),
                             torch.ones(len(predicted), dtype=torch.long), accumulate=True)
        write_confusion_csv(self.run_dir / "confusion_val.csv", confusion, pl_module.class_names)


class ImageSampleLogger(Callback):
    """With run.log_images: a few validation images to W&B once, as pixels with the class
    name as caption. Nothing else about the image (no path, no DICOM header) is sent."""

    def __init__(self, count: int = 8) -> None:
        self.count, self.done = count, False

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.done or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.done = True
        x, y = batch[0][: self.count].float().cpu(), batch[1][: self.count].tolist()
        low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        # 8-bit pixels, stretched per image: wandb (0.31) casts float pixels to uint8 without
        # scaling, so [0, 1] floats would arrive as black images.
        pixels = ((x - low) / (high - low + 1e-6) * 255).round().to(torch.uint8)[:, 0].numpy()
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/examples", images=list(pixels), caption=[pl_module.class_names[i] for i in y])


class PredictionWriter(BasePredictionWriter):
    """predictions.csv (predictions-rank{R}.csv under DDP): path relative to the data root, the
    true label when known, one probability column per class, and the decision: for binary
    tasks the threshold of the model's operating point (chosen on validation) and the label at
    it, else the most probable class. `rows(index) -> (relative path, label)` is given by the
    CLI, which knows the data; this writer does not reach into the data module."""

    def __init__(self, run_dir: Path, rows: Callable[[int], tuple[str, str]]) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir, self.rows = Path(run_dir), rows

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        point = pl_module.operating_point
        suffix = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        rows = []
        for batch in predictions:
            logits = batch["logits"].cpu()
            probs = point.probabilities(logits.numpy()) if point is not None else torch.softmax(logits, 1).numpy()
            rows += [(*self.rows(index), p) for index, p in zip(batch["index"].tolist(), probs)]
        self.path = write_predictions(self.run_dir / f"predictions{suffix}.csv", rows, pl_module.class_names, point)


def write_predictions(path: Path, rows, names: list[str], point) -> Path:
    """rows: (relative path, label, probabilities); binary decisions at the point's threshold
    (0.5 without one), else the most probable class."""
    threshold = point.threshold.value if point is not None and point.threshold is not None else 0.5
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        header = ["path", "label", *[f"prob_{spreadsheet_safe(n)}" for n in names]]
        writer.writerow([*header, *(["threshold"] if len(names) == 2 else []), "predicted"])
        for rel, label, p in rows:
            decision = [f"{threshold:.6g}", names[int(p[1] >= threshold)]] if len(names) == 2 else \
                [names[int(p.argmax())]]
            writer.writerow([*map(spreadsheet_safe, (rel, label)), *[f"{v:.6f}" for v in p],
                             *map(spreadsheet_safe, decision)])
    return path
