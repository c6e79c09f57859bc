"""Where the model looks: Grad-CAM maps (pytorch-grad-cam) and their overlays on the radiograph
(README, "Where the model looks"). The target layer is the stage whose output the head pools:
an earlier stage gives sharper maps of a different question (what low-level pattern fired)."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from rundir.layout import EXPLAIN_DIR


def target_layer(model: nn.Module) -> nn.Module:
    """The last top-level module of a ``build_backbone`` model that holds a convolution: the
    stage the head pools (layer4, features, trunk_output; a densenet's forward applies relu and
    pools its features). tests/test_explain.py checks it for every ``BackboneName``."""
    return [m for m in model.children() if any(isinstance(c, nn.Conv2d) for c in m.modules())][-1]


def class_activation_maps(model: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM of ``classes[i]`` for ``images[i]`` (N, C, H, W): (N, H, W) in [0, 1], each map
    scaled to its own maximum (pytorch-grad-cam's convention). The model is put in eval mode."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = model.training
    try:
        with GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """(H, W) grey image (any range) and its (H, W) map -> (H, W, 3) uint8 RGB heat-map overlay;
    the image is contrast-stretched as the W&B image samples are."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    grey = np.asarray(image, dtype=np.float32)
    low, high = float(grey.min()), float(grey.max())
    grey = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    return show_cam_on_image(rgb, np.clip(cam, 0, 1).astype(np.float32), use_rgb=True, image_weight=0.5)


def explainable(backbone: nn.Module) -> nn.Module:
    """A float32 copy in eval mode, on the same device, to map with. A copy: Grad-CAM's backward
    must not reach the live module (its .grad, DDP's gradient hooks). float32: with
    trainer.precision=bf16-true the weights are bfloat16, and pytorch-grad-cam reads activations
    and gradients through numpy (base_cam.py: ``.cpu().data.numpy()``), which has no bfloat16."""
    return deepcopy(backbone).float().eval()


def fold_backbones(backbone: nn.Module, checkpoints: Sequence[Path]) -> list[nn.Module]:
    """A copy of ``backbone`` (an XrayClassifier's; ``explainable``) per checkpoint, with that
    checkpoint's weights: the models of a fold ensemble."""
    device = next(backbone.parameters()).device
    copies = []
    for path in checkpoints:
        state = torch.load(path, map_location=device, weights_only=False)["state_dict"]
        copy = explainable(backbone)
        copy.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
        copies.append(copy)
    return copies


def ensemble_maps(backbones: Sequence[nn.Module], images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """The ensemble's map: the mean of each model's Grad-CAM, each at its own target layer
    (one model: its map)."""
    return np.mean([class_activation_maps(m, images, classes) for m in backbones], axis=0)


def probabilities(point, logits: np.ndarray) -> np.ndarray:
    """At the operating point's temperature (training.operating_point); softmax without one."""
    if point is not None:
        return point.probabilities(logits)
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()


class ExplainWriter(Callback):
    """``predict --eval.explain=true``: explanations/<row>.png per predicted image (its row in
    predictions.csv, never its file name), of the decided class. ``ensemble`` (operating point,
    fold checkpoints; `--cv.run_dir`): the folds' mean map, written in the first of the folds'
    predict passes (each predicts the same images)."""

    def __init__(self, run_dir: Path, evaluation=None, ensemble: Optional[tuple] = None) -> None:
        self.out = Path(run_dir) / EXPLAIN_DIR
        self.evaluation, self.ensemble = evaluation, ensemble
        self.backbones: Optional[list[nn.Module]] = None
        self.done = False

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.done = self.ensemble is not None

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from PIL import Image

        if self.done:
            return
        point = self.ensemble[0] if self.ensemble else getattr(self.evaluation, "point", None)
        # predict runs under inference_mode, where nothing can be differentiated: step out of it,
        # on copies of the pixels (inference tensors cannot enter autograd)
        with torch.inference_mode(False), torch.enable_grad():
            x = batch[0].clone().float()
            if self.backbones is None:  # the weights predict uses: loaded before its first batch
                self.backbones = (fold_backbones(pl_module.backbone, self.ensemble[1]) if self.ensemble
                                  else [explainable(pl_module.backbone)])
            logits = [m(x).detach() for m in self.backbones] if self.ensemble else [outputs["logits"]]
            probs = np.mean([probabilities(point, z.float().cpu().numpy()) for z in logits], axis=0)
            classes = point.decisions(probs) if point else probs.argmax(1)
            maps = ensemble_maps(self.backbones, x, classes)
        self.out.mkdir(parents=True, exist_ok=True)
        for index, image, cam in zip(outputs["index"].tolist(), x[:, 0].cpu().numpy(), maps):
            Image.fromarray(overlay(image, cam)).save(self.out / f"{int(index):06d}.png")
