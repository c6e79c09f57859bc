"""Test images chosen to teach, with their Grad-CAM overlays, for report.html (README, "Where the
model looks"): computed in the run, which has the model, written as JPEG thumbnails with their
probability and classes, never a file name (with run.log_images: the same to W&B, nothing else)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from models.explain import ExplainWriter, ensemble_maps, explainable, fold_backbones, overlay, probabilities
from rundir.atomic import write_atomic
from rundir.layout import TEST_OVERLAYS

log = logging.getLogger("cli")
PER_KIND = 4  # 12 thumbnails at most: enough to see a pattern, a page that stays small
THUMBNAIL_PX = 192  # longest side; JPEG at this size is ~5-10 kB, so the page grows by ~100 kB at most
# kind -> what it shows (choose() sorts each kind by the positive-class probability)
KINDS = {
    "true_positive": "most confident true positives",
    "false_positive": "worst false positives (most confident)",
    "false_negative": "worst false negatives (least probable)",
}


def choose(probs: np.ndarray, labels: np.ndarray, decisions: np.ndarray) -> list[tuple]:
    """(kind, image index) of the images to show, binary tasks (class 1 positive), best first."""
    p, positive, called = probs[:, 1], labels == 1, decisions == 1
    wanted = {"true_positive": (positive & called, -p), "false_positive": (~positive & called, -p),
              "false_negative": (positive & ~called, p)}
    picks = []
    for kind, (mask, key) in wanted.items():
        index = np.flatnonzero(mask)
        picks += [(kind, int(i)) for i in index[np.argsort(key[index], kind="stable")][:PER_KIND]]
    return picks


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def teaching_overlays(backbones: Sequence[nn.Module], inputs: Callable[[list[int]], torch.Tensor],
                      probs: np.ndarray, labels: np.ndarray, decisions: np.ndarray,
                      class_names: Sequence[str]) -> list[dict]:
    """One entry per chosen image, with the overlay of the decided class's map (the mean over
    ``backbones``) as JPEG bytes; ``inputs(indices)``: those images' model inputs (N, 1, H, W)."""
    picks = choose(probs, labels, decisions)
    if not picks:
        return []
    index = [i for _, i in picks]
    # Under inference mode (test) nothing can be differentiated: out of it, on fresh tensors.
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs(index).clone().float()
        maps = ensemble_maps(backbones, x, decisions[index])
    return [{"kind": kind, "probability": float(probs[i, 1]), "true": class_names[int(labels[i])],
             "predicted": class_names[int(decisions[i])], "jpeg": _jpeg(overlay(image, cam))}
            for (kind, i), image, cam in zip(picks, x[:, 0].detach().cpu().numpy(), maps)]


def caption(entry: dict, positive: str) -> str:
    return (f"{entry['kind'].replace('_', ' ')}: P({positive}) = {entry['probability']:.3f}, "
            f"true {entry['true']}, predicted {entry['predicted']}")


def publish(run_dir: Path, backbones: Sequence[nn.Module], inputs: Callable[[list[int]], torch.Tensor],
            probs: np.ndarray, labels: np.ndarray, point, class_names: Sequence[str], loggers=(),
            log_images: bool = False, ensemble: int = 0) -> None:
    """The images chosen at the operating point `point`, mapped: explanations/test_overlays.json
    (written whole or not at all), and W&B's test/overlays."""
    decisions = point.decisions(probs) if point else probs.argmax(1)
    entries = teaching_overlays(backbones, inputs, probs, labels, decisions, class_names)
    path = Path(run_dir) / TEST_OVERLAYS
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({"per_kind": PER_KIND, "kinds": KINDS, "positive": class_names[1], "ensemble_folds": ensemble,
                       "images": [{**e, "jpeg": base64.b64encode(e["jpeg"]).decode("ascii")} for e in entries]}))
    if not log_images or not entries:
        return
    from PIL import Image

    pixels = [np.asarray(Image.open(io.BytesIO(e["jpeg"]))) for e in entries]  # pixels only, as shown
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image("test/overlays", images=pixels, caption=[caption(e, class_names[1]) for e in entries])


def _inputs(datamodule, rows: Sequence[int], device) -> Callable[[list[int]], torch.Tensor]:
    """Model inputs of test images: dataset rows ``rows[i]``, read and normalised as in test."""
    dataset = datamodule.test_dataloader().dataset

    def inputs(index: list[int]) -> torch.Tensor:
        x = torch.stack([dataset[int(rows[i])][0] for i in index]).to(device)
        return datamodule.on_after_batch_transfer([x], 0)[0]

    return inputs


class OverlaysAfterTest(Callback):
    """After test, with eval.explain: the images chosen to teach, mapped with the tested weights."""

    def __init__(self, run_dir: Path, evaluation, log_images: bool = False) -> None:
        self.run_dir, self.evaluation, self.log_images = Path(run_dir), evaluation, log_images

    def on_test_end(self, trainer, pl_module) -> None:
        out = self.evaluation.outputs.get("test")
        # Rank 0 alone, after the test's last collective (lightning/pytorch/loops/evaluation_loop.py:
        # log_eval_end_metrics, then _on_evaluation_end calls this hook). The maps come from a copy
        # that is no DDP module (explainable), so nothing here reaches a collective; the other ranks
        # wait at the next barrier for the seconds 12 maps take.
        if not trainer.is_global_zero or out is None:
            return
        if out["logits"].shape[1] != 2:
            log.info("eval.explain: test overlays are for binary tasks; none written")
            return
        point = self.evaluation.point
        with torch.inference_mode(False):  # test runs under it: the copy must be an ordinary tensor
            backbones = [explainable(pl_module.backbone)]
        inputs = _inputs(trainer.datamodule, out["index"], pl_module.device)
        publish(self.run_dir, backbones, inputs, probabilities(point, out["logits"]), out["labels"], point,
                pl_module.class_names, trainer.loggers, self.log_images)


def ensemble_overlays(cli, probs: np.ndarray, labels: np.ndarray, rels: Sequence[str], checkpoints: Sequence[Path],
                      point) -> None:
    """A cross-validated run's parent: the fold ensemble's probabilities of the test images ``rels``
    choose them, its maps show them. On the CPU: the parent trains nothing, so opens no GPU context."""
    if probs.shape[1] != 2:
        return
    model, datamodule = cli.model.cpu(), cli.datamodule
    if not datamodule.has_split("test"):
        return
    datamodule.setup("test")
    row_of = {r.rel: i for i, r in enumerate(datamodule.records_of("test"))}
    backbones = fold_backbones(model.backbone, checkpoints)
    inputs = _inputs(datamodule, [row_of[r] for r in rels], torch.device("cpu"))
    publish(cli.run_dir, backbones, inputs, probs, labels, point, model.class_names, cli.trainer.loggers,
            cli.config_init[cli.subcommand].run.log_images, ensemble=len(backbones))


def explainer(subcommand: str, run_dir: Path, evaluation, ensemble: Optional[tuple], log_images: bool) -> Callback:
    """The eval.explain callback of a subcommand: predict's overlay per image, else the test's."""
    if subcommand == "predict":
        return ExplainWriter(run_dir, evaluation, ensemble)
    return OverlaysAfterTest(run_dir, evaluation, log_images)
