"""XrayClassifier: one LightningModule for hand and foot radiographs. Hyperparameters are short
top-level init arguments so that sweeps name them `model.lr`, ... (the signature is the schema)."""

from __future__ import annotations

import math
from typing import Literal, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from models.backbones import BackboneName, build_backbone

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self._compiled or self.backbone)(x)

    def model_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        return self.loss(logits, y), logits, y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _, y = self.model_step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss; also the validation/test loss over a whole split (training.evaluate)."""
        return F.cross_entropy(logits.float(), labels, weight=self.loss_weights,
                               label_smoothing=self.hparams.label_smoothing)

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The outputs training.evaluate.Evaluation gathers (each image by its dataset index)."""
        _, logits, y = self.model_step(batch)
        return {"logits": logits.detach().float(), "labels": y.detach(), "index": batch[2].detach()}

    test_step = validation_step

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

