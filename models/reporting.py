"""Files a run leaves next to its checkpoints: confusion matrices and predictions.

Paths written here are relative to the data root: nothing else about where patient images
live leaves the machine.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import WandbLogger

from datamodules.csvsafe import spreadsheet_safe
from models.classifier import write_confusion_csv


class ConfusionWriter(Callback):
    """confusion_val.csv after every validation (the last one stays) and confusion_test.csv,
    plus a W&B table for the test confusion matrix."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        confusion = getattr(pl_module, "last_confusion", {}).get(stage)
        if trainer.sanity_checking or confusion is None or not trainer.is_global_zero:
            return
        names = pl_module.class_names
        write_confusion_csv(self.run_dir / f"confusion_{stage}.csv", confusion, names)
        if stage == "test":
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    rows = [[t, p, int(confusion[i, j])] for i, t in enumerate(names) for j, p in enumerate(names)]
                    logger.log_table("test/confusion_matrix", columns=["true", "predicted", "count"], data=rows)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module, "test")


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
        x = (x - x.amin(dim=(1, 2, 3), keepdim=True)) / (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True) + 1e-6)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/examples", images=list(x), caption=[pl_module.class_names[i] for i in y])


class PredictionWriter(BasePredictionWriter):
    """predictions.csv (predictions-rank{R}.csv under DDP): path relative to the data root,
    the true label when known, the predicted class and one probability column per class."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir = Path(run_dir)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        records = trainer.datamodule.predict_records()
        names = pl_module.class_names
        suffix = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        path = self.run_dir / f"predictions{suffix}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "predicted", *[f"prob_{n}" for n in names]])
            for batch in predictions:
                for index, probs in zip(batch["index"].tolist(), batch["probs"]):
                    record = records[index]
                    writer.writerow(
                        [*map(spreadsheet_safe, (record.rel, record.label, names[int(torch.argmax(probs))])), *[f"{p:.6f}" for p in probs.tolist()]]
                    )
        self.path = path
