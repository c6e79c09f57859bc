"""Where the model looks: Grad-CAM maps (the `grad-cam` package, pytorch-grad-cam) on the last
spatial feature map of each backbone, and overlays of them on the radiograph (README, "Where
the model looks").

The target layer is the one whose output the classifier pools: the last convolutional stage.
Maps from an earlier stage are sharper but answer a different question (what low-level
pattern fired), and the head never sees them directly; ``target_layer`` names it per
architecture family and tests/test_explain.py checks, for every ``BackboneName``, that its
output is what the head's first Linear reads (same channels) and that the maps land on a
burned-in marker a model was trained to use.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from models.backbones import BACKBONES

EXPLAIN_DIR = "explanations"  # beside predictions.csv
# torchvision attribute of the last spatial stage, per family (names start with the family).
TARGET_LAYERS = {
    "resnet": "layer4",
    "densenet": "features",  # ends with norm5; forward applies relu and pools it
    "efficientnet": "features",
    "convnext": "features",
    "mobilenet": "features",
    "regnet": "trunk_output",
}


def target_layer_name(backbone: str) -> str:
    family = next((f for f in TARGET_LAYERS if backbone.startswith(f)), None)
    if family is None or backbone not in BACKBONES:
        raise ValueError(f"no Grad-CAM target layer known for backbone {backbone!r}; families: "
                         f"{', '.join(TARGET_LAYERS)}")
    return TARGET_LAYERS[family]


def target_layer(model: nn.Module, backbone: str) -> nn.Module:
    """The module of ``model`` (a ``build_backbone`` result) whose output the head pools."""
    return model.get_submodule(target_layer_name(backbone))


def class_activation_maps(model: nn.Module, backbone: str, images: torch.Tensor,
                          classes: list[int] | np.ndarray) -> np.ndarray:
    """Grad-CAM of ``classes[i]`` for ``images[i]`` (N, C, H, W): (N, H, W) in [0, 1], each map
    scaled to its own maximum (pytorch-grad-cam's convention). The model is put in eval mode."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = model.training
    try:
        with GradCAM(model=model, target_layers=[target_layer(model, backbone)]) as cam:
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """(H, W) grey image (any range) and its (H, W) map -> (H, W, 3) uint8 RGB heat-map overlay;
    the image is contrast-stretched as the W&B image samples are."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    grey = np.asarray(image, dtype=np.float32)
    low, high = float(grey.min()), float(grey.max())
    grey = (grey - low) / (high - low) if high > low else np.zeros_like(grey)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    return show_cam_on_image(rgb, np.clip(cam, 0, 1).astype(np.float32), use_rgb=True, image_weight=weight)


class ExplainWriter(Callback):
    """``cli.py predict --explain``: one Grad-CAM overlay per predicted image, of the class the
    model predicts (argmax), as explanations/<row>.png next to predictions.csv; <row> is the
    image's row in predictions.csv (from 0), never its file name. Written to disk only."""

    def __init__(self, run_dir: Path) -> None:
        if importlib.util.find_spec("pytorch_grad_cam") is None:  # before any image is predicted
            raise ValueError("--explain needs the grad-cam package: pip install grad-cam")
        self.out = Path(run_dir) / EXPLAIN_DIR

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from PIL import Image

        # predict runs under inference_mode, where nothing can be differentiated: step out of it,
        # on copies of the pixels (inference tensors cannot enter autograd)
        with torch.inference_mode(False), torch.enable_grad():
            x = batch[0].clone()
            classes = outputs["logits"].clone().argmax(1).tolist()
            maps = class_activation_maps(pl_module.backbone, pl_module.hparams.backbone, x, classes)
        self.out.mkdir(parents=True, exist_ok=True)
        for index, image, cam in zip(outputs["index"].tolist(), x[:, 0].cpu().numpy(), maps):
            Image.fromarray(overlay(image, cam)).save(self.out / f"{int(index):06d}.png")
