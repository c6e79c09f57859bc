"""Where the model looks: Grad-CAM on the right layer of every backbone, on 1-channel inputs,
and a shortcut check: a model trained on phantoms whose abnormal class carries a burned-in
marker looks at the marker."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import torch
from torch import nn

from models.backbones import BackboneName, build_backbone
from models.explain import class_activation_maps, overlay, target_layer, target_layer_name

pytest.importorskip("pytorch_grad_cam")


# Building the larger torchvision models takes seconds each on two CPU cores: resnet18 stays in
# the fast suite, the others are slow.
@pytest.mark.parametrize("name", [n if n == "resnet18" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in get_args(BackboneName)])
def test_target_layer_is_what_the_head_pools_and_maps_have_the_input_size(name):
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=2, in_chans=1)
    seen: dict = {}

    def head_input(module, inputs, output):  # the first Linear to run after the target layer
        if "target" in seen:
            seen.setdefault("head_in", inputs[0].shape[-1])

    hooks = [m.register_forward_hook(head_input) for m in model.modules() if isinstance(m, nn.Linear)]
    hooks.append(target_layer(model, name).register_forward_hook(lambda m, i, o: seen.setdefault("target", o)))
    with torch.no_grad():
        model.eval()(torch.rand(1, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    # the head reads exactly the target's channels, pooled: an earlier stage (layer3,
    # features[-2]) has fewer channels, and a later module is not 4-D
    assert seen["target"].ndim == 4 and seen["target"].shape[1] == seen["head_in"], name
    maps = class_activation_maps(model, name, torch.rand(2, 1, 64, 48), [1, 0])
    assert maps.shape == (2, 64, 48) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_unknown_backbone_names_the_families():
    with pytest.raises(ValueError, match="resnet, densenet"):
        target_layer_name("vit_b_16")


def test_overlay_is_rgb_uint8_of_the_image_size():
    image = np.random.default_rng(0).integers(0, 65535, (40, 30)).astype(np.uint16)
    cam = np.zeros((40, 30), np.float32)
    cam[:10, :10] = 1
    out = overlay(image, cam)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert out[:10, :10, 0].mean() > out[30:, 20:, 0].mean()  # hot (red) where the map is high


def _marker_data(n: int, size: int, seed: int):
    """Hand phantoms; abnormal ones carry an L marker in a random corner (the label's shortcut)."""
    from datamodules.phantoms import burn_in_marker, render_phantom

    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for i in range(n):
        abnormal = bool(i % 2)
        img = render_phantom(body_part="hand", abnormal=abnormal, size=(size, size), severity=0.3,
                             patient_rng=np.random.default_rng(rng.integers(1 << 31)),
                             image_rng=np.random.default_rng(rng.integers(1 << 31)))
        box = None
        if abnormal:
            img, box = burn_in_marker(img, corner=int(rng.integers(4)))
        images.append(img)
        labels.append(int(abnormal))
        boxes.append(box)
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32), torch.tensor(labels), boxes


@pytest.mark.slow
def test_maps_land_on_a_burned_in_marker_the_model_learned():
    torch.manual_seed(0)
    size = 64  # resnet18's layer4 is then 2x2: one cell per quadrant, the marker in one of them
    x, y, _ = _marker_data(64, size, seed=1)
    model = build_backbone("resnet18", num_classes=2, in_chans=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(6):
        for batch in torch.randperm(len(x)).split(16):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    # 24 steps leave BatchNorm's running averages far from the data: recompute them exactly
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    with torch.no_grad():
        model(x)
    tx, ty, boxes = _marker_data(24, size, seed=2)
    model.eval()
    with torch.no_grad():
        accuracy = (model(tx).argmax(1) == ty).float().mean().item()
    assert accuracy > 0.9  # it learned the shortcut
    abnormal = [i for i, b in enumerate(boxes) if b is not None]
    maps = class_activation_maps(model, "resnet18", tx[abnormal], [1] * len(abnormal))
    on_marker = []
    for cam, i in zip(maps, abnormal):
        r0, r1, c0, c1 = boxes[i]
        row, col = np.unravel_index(np.argmax(cam), cam.shape)
        # the hottest point is in the marker's quadrant
        on_marker.append((row < size / 2) == ((r0 + r1) / 2 < size / 2) and (col < size / 2) == ((c0 + c1) / 2 < size / 2))
    assert np.mean(on_marker) >= 0.8, on_marker


def test_predict_explain_writes_one_overlay_per_prediction_row(fit_args, hand_data):
    import csv

    from PIL import Image

    from models.explain import EXPLAIN_DIR
    from training.cli import cli_main

    pred = cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), "--explain=true"])
    rows = list(csv.DictReader(open(pred.run_dir / "predictions.csv")))
    written = sorted(p.name for p in (pred.run_dir / EXPLAIN_DIR).iterdir())
    assert written == [f"{i:06d}.png" for i in range(len(rows))] and rows  # named by row, never by file
    image = Image.open(pred.run_dir / EXPLAIN_DIR / written[0])
    assert image.mode == "RGB" and image.size == (32, 32)  # data.image_size in the tiny settings
