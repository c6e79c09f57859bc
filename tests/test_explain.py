"""Where the model looks: Grad-CAM on the right layer of every backbone, on 1-channel inputs,
and a shortcut check: a model trained on phantoms whose abnormal class carries a burned-in
marker looks at the marker."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from test_analysis import make_sweep_dir
from torch import nn

from models.backbones import BackboneName, build_backbone
from models.explain import (
    class_activation_maps,
    ensemble_maps,
    fold_backbones,
    overlay,
    target_layer,
)
from sweeps.analysis.report import write_report

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
    hooks.append(target_layer(model).register_forward_hook(lambda m, i, o: seen.setdefault("target", o)))
    with torch.no_grad():
        model.eval()(torch.rand(1, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    # the head reads exactly the target's channels, pooled: an earlier stage (layer3,
    # features[-2]) has fewer channels, and a later module is not 4-D
    assert seen["target"].ndim == 4 and seen["target"].shape[1] == seen["head_in"], name
    maps = class_activation_maps(model, torch.rand(2, 1, 64, 48), [1, 0])
    assert maps.shape == (2, 64, 48) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_overlay_is_rgb_uint8_of_the_image_size():
    image = np.random.default_rng(0).integers(0, 65535, (40, 30)).astype(np.uint16)
    cam = np.zeros((40, 30), np.float32)
    cam[:10, :10] = 1
    out = overlay(image, cam)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert out[:10, :10, 0].mean() > out[30:, 20:, 0].mean()  # hot (red) where the map is high


def _burn_in_marker(img: np.ndarray, *, corner: int, size_fraction: float = 0.18) -> tuple[np.ndarray, tuple]:
    """A bright side marker (the letter L, as radiographers burn in) in corner 0-3 (top-left,
    top-right, bottom-left, bottom-right) of a phantom in [0, 1]; returns the image and the
    marker's box (row0, row1, col0, col1). A model trained where the marker goes with
    the label should look at it."""
    h, w = img.shape
    side = max(6, int(min(h, w) * size_fraction))
    margin = max(1, side // 4)
    r0 = margin if corner in (0, 1) else h - margin - side
    c0 = margin if corner in (0, 2) else w - margin - side
    out = img.copy()
    stroke = max(2, side // 4)
    out[r0:r0 + side, c0:c0 + stroke] = 1.0  # the L's upright
    out[r0 + side - stroke:r0 + side, c0:c0 + side] = 1.0  # and its foot
    return out, (r0, r0 + side, c0, c0 + side)


def _marker_data(n: int, size: int, seed: int):
    """Hand phantoms; abnormal ones carry an L marker in a random corner (the label's shortcut)."""
    from datamodules.phantoms import render_phantom

    rng = np.random.default_rng(seed)
    images, labels, boxes = [], [], []
    for i in range(n):
        abnormal = bool(i % 2)
        img = render_phantom(body_part="hand", abnormal=abnormal, size=(size, size), severity=0.3,
                             patient_rng=np.random.default_rng(rng.integers(1 << 31)),
                             image_rng=np.random.default_rng(rng.integers(1 << 31)))
        box = None
        if abnormal:
            img, box = _burn_in_marker(img, corner=int(rng.integers(4)))
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
    maps = class_activation_maps(model, tx[abnormal], [1] * len(abnormal))
    on_marker = []
    for cam, i in zip(maps, abnormal):
        r0, r1, c0, c1 = boxes[i]
        row, col = np.unravel_index(np.argmax(cam), cam.shape)
        # the hottest point is in the marker's quadrant
        on_marker.append((row < size / 2) == ((r0 + r1) / 2 < size / 2) and (col < size / 2) == ((c0 + c1) / 2 < size / 2))
    assert np.mean(on_marker) >= 0.8, on_marker
    # the report's path (models/teaching.py): its most confident true positives are shown with the
    # overlay of exactly these maps, and those land on the marker
    from PIL import Image

    from models.teaching import choose, teaching_overlays

    with torch.no_grad():
        probs = torch.softmax(model(tx), 1).numpy()
    labels, decisions = ty.numpy(), probs.argmax(1)
    entries = teaching_overlays([model], lambda index: tx[index], probs, labels, decisions, ["normal", "abnormal"])
    hits = []
    for (kind, i), entry in zip(choose(probs, labels, decisions), entries):
        if kind == "true_positive":
            cam = class_activation_maps(model, tx[[i]], [1])[0]
            shown = np.asarray(Image.open(io.BytesIO(entry["jpeg"]))).astype(int)
            assert np.abs(shown - overlay(tx[i, 0].numpy(), cam)).mean() < 8  # this map's overlay, JPEG aside
            r0, r1, c0, c1 = boxes[i]
            row, col = np.unravel_index(np.argmax(cam), cam.shape)
            hits.append((row < size / 2) == ((r0 + r1) / 2 < size / 2) and (col < size / 2) == ((c0 + c1) / 2 < size / 2))
    assert len(hits) == 4 and sum(hits) >= 3, hits


def test_predict_explain_writes_one_overlay_per_prediction_row(fit_args, hand_data):
    import csv

    from PIL import Image

    from rundir.layout import EXPLAIN_DIR
    from training.cli import cli_main

    pred = cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), "--eval.explain=true"])
    rows = list(csv.DictReader(open(pred.run_dir / "predictions.csv")))
    written = sorted(p.name for p in (pred.run_dir / EXPLAIN_DIR).iterdir())
    assert written == [f"{i:06d}.png" for i in range(len(rows))] and rows  # named by row, never by file
    image = Image.open(pred.run_dir / EXPLAIN_DIR / written[0])
    assert image.mode == "RGB" and image.size == (32, 32)  # data.image_size in the tiny settings


def test_the_old_explain_flag_names_its_new_place(fit_args):
    from training.cli import cli_main

    with pytest.raises(ValueError, match=r"--explain is now --eval.explain=true"):
        cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), "--explain"])


def _grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """pytorch-grad-cam directly, on a layer named by the test."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model.eval(), target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def test_the_ensemble_map_is_the_mean_of_each_folds_map_at_its_own_layer(tmp_path):
    """The fold ensemble's map (predict --cv.run_dir and a CV run's report overlays): each fold's
    weights from its checkpoint, each fold's model at its own target layer, then the mean. A map
    of one fold only, or of another layer, differs."""
    checkpoints, folds = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folds.append(build_backbone("resnet18", num_classes=2, in_chans=1))
        checkpoints.append(tmp_path / f"fold_{seed}.ckpt")
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in folds[-1].state_dict().items()}}, checkpoints[-1])
    torch.manual_seed(2)
    live = build_backbone("resnet18", num_classes=2, in_chans=1)  # the CLI's model: its weights are not used
    copies = fold_backbones(live, checkpoints)
    assert all(c is not live for c in copies)
    x, classes = torch.rand(2, 1, 64, 64), [1, 0]
    maps = ensemble_maps(copies, x, classes)
    expected = np.mean([_grad_cam(f, f.layer4, x, classes) for f in folds], axis=0)
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    wrong_layer = np.mean([_grad_cam(f, f.layer3, x, classes) for f in folds], axis=0)
    assert np.abs(maps - wrong_layer).max() > 0.1
    assert np.abs(maps - _grad_cam(folds[0], folds[0].layer4, x, classes)).max() > 0.05  # both folds count


def test_report_overlays_are_computed_at_each_models_target_layer(monkeypatch):
    """The report path (models/teaching.py) maps through GradCAM on exactly target_layer of
    every model it is given, and its pixels are the overlay of that map."""
    import pytorch_grad_cam

    from models.teaching import choose, teaching_overlays

    hooked = []
    original = pytorch_grad_cam.GradCAM.__init__

    def spy(self, model, target_layers, *args, **kwargs):
        hooked.append((model, target_layers))
        original(self, model, target_layers, *args, **kwargs)

    monkeypatch.setattr(pytorch_grad_cam.GradCAM, "__init__", spy)
    torch.manual_seed(0)
    models = [build_backbone("resnet18", num_classes=2, in_chans=1).eval() for _ in range(2)]
    x = torch.rand(8, 1, 48, 48)
    probs = np.stack([1 - np.linspace(0.05, 0.95, 8), np.linspace(0.05, 0.95, 8)], axis=1)
    labels, decisions = np.array([0, 1, 0, 1, 0, 1, 0, 1]), (probs[:, 1] >= 0.5).astype(int)
    entries = teaching_overlays(models, lambda index: x[index], probs, labels, decisions, ["normal", "abnormal"])
    assert [(m, layers) for m, layers in hooked] == [(m, [m.layer4]) for m in models]
    picks = choose(probs, labels, decisions)
    assert [e["kind"] for e in entries] == [k for k, _ in picks]
    assert {k for k, _ in picks} == {"true_positive", "false_positive", "false_negative"}
    assert [e["probability"] for e in entries] == [probs[i, 1] for _, i in picks]
    worst_fp = max((p for p, y, d in zip(probs[:, 1], labels, decisions) if y == 0 and d == 1))
    assert next(e for e in entries if e["kind"] == "false_positive")["probability"] == worst_fp


def test_fit_writes_the_test_overlays_with_no_file_name_in_them_nor_in_wandb(fit_args, tmp_path):
    """eval.explain after fit's test: explanations/test_overlays.json (thumbnails, probability,
    classes) and, with run.log_images, W&B's test/overlays: pixels and captions, no file name."""
    import base64
    import io
    import json

    from PIL import Image
    from wandb_records import history, run_file

    from rundir.layout import TEST_OVERLAYS
    from training.cli import cli_main

    fit = cli_main(fit_args("configs/demo.yaml", "--eval.explain=true", "--run.wandb=offline",
                            "--run.log_images=true", "--trainer.limit_test_batches=1.0"))
    text = (fit.run_dir / TEST_OVERLAYS).read_text()
    data = json.loads(text)
    assert data["images"] and len(data["images"]) <= 3 * data["per_kind"]
    for entry in data["images"]:
        assert set(entry) == {"kind", "probability", "true", "predicted", "jpeg"}
        assert Image.open(io.BytesIO(base64.b64decode(entry["jpeg"]))).format == "JPEG"
    rows = [row for row in history(run_file(fit.run_dir)) if any(k.startswith("test/overlays") for k in row)]
    assert len(rows) == 1 and rows[0]["test/overlays.count"] == len(data["images"])
    captions = " ".join(rows[0]["test/overlays.captions"])
    names = {part for r in fit.datamodule.records for part in (r.rel, Path(r.rel).name, Path(r.rel).stem)}
    names |= {r.patient_id for r in fit.datamodule.records}
    fields = json.dumps([{k: v for k, v in e.items() if k != "jpeg"} for e in data["images"]])  # base64 aside
    assert not [n for n in names if n in fields or n in captions]
    assert "P(abnormal) = " in captions
    # the report of a sweep whose best run is this one embeds the same thumbnails, and no name
    sweep_dir = make_sweep_dir(tmp_path)
    best = sweep_dir / "runs" / "0004"
    for name in (TEST_OVERLAYS, "test_report.json"):
        (best / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fit.run_dir / name, best / name)
    page = write_report(sweep_dir).read_text()
    assert page.count('src="data:image/jpeg;base64,') == len(data["images"])
    assert all(e["jpeg"] in page for e in data["images"])
    assert "Worst false positives" in page and "the tested model's map" in page
    outside_pixels = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+|<script.*?</script>", "", page, flags=re.S)
    assert not [n for n in names if n in outside_pixels]


@pytest.mark.slow
def test_a_cv_run_and_its_ensemble_predict_write_the_fold_ensembles_maps(fit_args):
    import json

    from rundir.layout import EXPLAIN_DIR, TEST_OVERLAYS
    from training.cli import cli_main

    cli = cli_main(fit_args("configs/demo.yaml", "--cv.folds=2", "--trainer.devices=2", "--eval.explain=true",
                            "--eval.bootstrap_resamples=200", "--trainer.limit_test_batches=1.0"))
    data = json.loads((cli.run_dir / TEST_OVERLAYS).read_text())
    assert data["ensemble_folds"] == 2 and data["images"]
    pred = cli_main([*fit_args("configs/demo.yaml", subcommand="predict"), f"--cv.run_dir={cli.run_dir}",
                     "--eval.explain=true"])
    rows = (pred.run_dir / "predictions.csv").read_text().splitlines()[1:]
    assert sorted(p.name for p in (pred.run_dir / EXPLAIN_DIR).iterdir()) == [f"{i:06d}.png" for i in range(len(rows))]


@pytest.mark.slow  # a whole fit in bf16 on the CPU: ~30 s on two loaded cores
def test_overlays_with_bfloat16_weights(fit_args):
    """trainer.precision=bf16-true keeps the weights in bfloat16, which numpy (where
    pytorch-grad-cam reads the maps) cannot hold: the maps come from a float32 copy."""
    import json

    from rundir.layout import TEST_OVERLAYS
    from training.cli import cli_main

    fit = cli_main(fit_args("configs/demo.yaml", "--eval.explain=true", "--trainer.precision=bf16-true"))
    assert json.loads((fit.run_dir / TEST_OVERLAYS).read_text())["images"]
    assert next(fit.model.backbone.parameters()).dtype == torch.bfloat16  # the live model is untouched
