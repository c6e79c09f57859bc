"""XrayClassifier: one LightningModule for hand and foot radiographs.

Hyperparameters are short top-level init arguments so that sweeps can name them as
`model.lr`, `model.optimizer`, ... (the init signature is the config schema).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal, Optional

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from datamodules.csvsafe import spreadsheet_safe
from models.backbones import BackboneName, build_backbone
from models.metrics import ClassificationMetrics, logged_metric_names

_OPTIMIZERS = {
    "adamw": lambda params, lr, wd, momentum: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "adam": lambda params, lr, wd, momentum: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd, momentum: torch.optim.SGD(
        params, lr=lr, weight_decay=wd, momentum=momentum, nesterov=momentum > 0
    ),
}


class XrayClassifier(pl.LightningModule):
    def __init__(
        self,
        backbone: BackboneName = "resnet18",
        weights: str = "none",
        num_classes: int = 2,
        class_names: Optional[list[str]] = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        momentum: float = 0.9,
        scheduler: Literal["cosine", "step", "plateau", "none"] = "cosine",
        warmup_epochs: float = 1.0,
        step_size: int = 10,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        class_weights: Optional[list[float]] = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        """
        Args:
            backbone: torchvision architecture.
            weights: "none", "default" (torchvision's pretrained weights, downloaded when online)
                or the path of a local .pth file (air-gapped sites).
            num_classes: number of classes; linked from the data module.
            class_names: class names in label order; linked from the data module.
            lr: peak learning rate.
            weight_decay: decoupled (adamw) or L2 (adam, sgd) weight decay.
            optimizer: adamw, adam or sgd (sgd uses `momentum`, with Nesterov when > 0).
            momentum: SGD momentum; ignored by adam and adamw.
            scheduler: cosine (linear warmup then cosine decay per step), step, plateau or none.
            warmup_epochs: warmup length for the cosine schedule, in epochs (fractions allowed).
            step_size: epochs between decays for the step schedule.
            gamma: decay factor for the step and plateau schedules.
            label_smoothing: cross-entropy label smoothing in [0, 1).
            dropout: dropout before the classification layer.
            class_weights: per-class loss weights; linked from the data module when
                data.balancing is class_weights.
            channels_last: use the channels_last memory format (faster convolutions on GPU).
            compile: wrap the backbone in torch.compile.
        """
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"model.class_weights has {len(class_weights)} values but there are {num_classes} classes"
            )
        self.save_hyperparameters()
        self.backbone = build_backbone(
            backbone, num_classes=num_classes, in_chans=1, weights=weights, dropout=dropout
        )
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        # Kept out of nn.Module's registry so checkpoints hold the backbone once, uncompiled.
        self.__dict__["_compiled"] = torch.compile(self.backbone) if compile else None
        self.register_buffer(
            "loss_weights",
            torch.tensor(class_weights, dtype=torch.float32) if class_weights else None,
            persistent=False,
        )
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.val_metrics = ClassificationMetrics(num_classes)
        # Every image's logits of the last val/test epoch, gathered from all ranks, by dataset
        # index: the evaluation (threshold on val, report with CIs on test) works on these.
        self.epoch_outputs: dict[str, dict[str, np.ndarray]] = {}
        self._epoch_metrics: dict[str, dict[str, torch.Tensor]] = {}  # computed once per epoch
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {"val": [], "test": []}
        self.log_eval_metrics = True  # off while the CLI collects outputs without logging
        self.operating_point = None  # training.evaluate.OperatingPoint, set by the CLI; saved in checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self._compiled or self.backbone)(x)

    def model_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(
            logits.float(), y, weight=self.loss_weights, label_smoothing=self.hparams.label_smoothing
        )
        return loss, logits, y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _, y = self.model_step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch, stage: str) -> None:
        _, logits, y = self.model_step(batch)
        self._outputs[stage].append((logits.detach().float(), y.detach(), batch[2].detach()))

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"] = []
        self.epoch_outputs.pop("val", None)
        self._epoch_metrics.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._outputs["test"] = []
        self.epoch_outputs.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        if self.log_eval_metrics:
            values = dict(self.current_metrics("val"))
            if values:  # sync_dist only averages the equal values of the ranks
                self.log("val/loss", values.pop("val/loss"), prog_bar=True, sync_dist=True)
                self.log_dict(values, prog_bar=False, sync_dist=True)
        else:
            self.gathered_outputs("val")

    def on_test_epoch_end(self) -> None:
        # Test figures (at the operating point chosen on validation, with CIs) are computed from
        # the gathered outputs by the CLI's evaluation report; here only the loss is logged.
        outputs = self.gathered_outputs("test")
        if self.log_eval_metrics and outputs is not None:
            self.log("test/loss", self._loss_of(outputs), sync_dist=True)

    def gathered_outputs(self, stage: str) -> Optional[dict[str, np.ndarray]]:
        """This epoch's outputs of every rank, once per image in dataset order (the padding
        DistributedSampler adds to even out the ranks is dropped); None when there are none.
        Collective under DDP the first time in an epoch: every rank must call it."""
        if stage not in self.epoch_outputs:
            self._gather_outputs(stage)
        return self.epoch_outputs.get(stage)

    def _gather_outputs(self, stage: str) -> None:
        parts = self._outputs[stage]
        self._outputs[stage] = []
        if not parts:
            return
        logits, labels, index = (torch.cat(t) for t in zip(*parts))
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            logits, labels, index = (self.all_gather(t).flatten(0, 1) for t in (logits, labels, index))
        index_np = index.cpu().numpy()
        _, first = np.unique(index_np, return_index=True)
        self.epoch_outputs[stage] = {"logits": logits.cpu().numpy()[first], "labels": labels.cpu().numpy()[first],
                                     "index": index_np[first]}

    def _loss_of(self, outputs: dict[str, np.ndarray]) -> torch.Tensor:
        """The training loss over the whole split (each image once), not a mean of batch means."""
        weight = self.loss_weights.cpu() if self.loss_weights is not None else None
        return F.cross_entropy(torch.from_numpy(outputs["logits"]), torch.from_numpy(outputs["labels"]).long(),
                               weight=weight, label_smoothing=self.hparams.label_smoothing)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.operating_point is not None:
            checkpoint["operating_point"] = self.operating_point.to_dict()

    def metric_names(self, stage: Literal["val", "test"] = "val") -> list[str]:
        return logged_metric_names(self.hparams.num_classes, stage)

    def current_metrics(self, stage: Literal["val"] = "val") -> dict[str, torch.Tensor]:
        """This epoch's metrics, e.g. {"val/loss": ..., "val/auroc": ...}, over every image of
        the split exactly once, from the gathered outputs (so DistributedSampler's padding
        counts nowhere). Every rank computes the same values from the same outputs. Collective
        under DDP the first time in an epoch: every rank must call it."""
        if stage in self._epoch_metrics:  # the sweep metric's callback asked first this epoch
            return self._epoch_metrics[stage]
        outputs = self.gathered_outputs(stage)
        if outputs is None:
            return {}
        logits = torch.from_numpy(outputs["logits"]).to(self.device)
        labels = torch.from_numpy(outputs["labels"]).long().to(self.device)
        self.val_metrics.reset()
        self.val_metrics.update(logits.softmax(dim=1), labels)
        values = {f"{stage}/loss": self._loss_of(outputs)}
        values.update({f"{stage}/{k}": v for k, v in self.val_metrics.compute().items()})
        self.val_metrics.reset()
        self._epoch_metrics[stage] = values
        return values

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, _, index = batch
        return {"index": index, "logits": self(x).float()}

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = _OPTIMIZERS[hp.optimizer](self.parameters(), hp.lr, hp.weight_decay, hp.momentum)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "step":
            return {"optimizer": optimizer, "lr_scheduler": StepLR(optimizer, hp.step_size, hp.gamma)}
        if hp.scheduler == "plateau":
            scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=hp.gamma, patience=2)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = min(int(hp.warmup_epochs * steps_per_epoch), total - 1)
        schedule = LambdaLR(optimizer, lambda step: cosine_with_warmup(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup from ~0 to 1, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def write_confusion_csv(path: Path, confusion: torch.Tensor, class_names: list[str]) -> None:
    """Rows are true classes, columns predicted classes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\pred", *map(spreadsheet_safe, class_names)])
        for name, row in zip(class_names, confusion.tolist()):
            writer.writerow([spreadsheet_safe(name), *row])
