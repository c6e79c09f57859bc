"""Evaluation, owned in one place (README "Reading the results"): the `Evaluation` callback
collects each epoch's outputs once, logs the epoch metrics, chooses the operating point on
validation (never on test), stores it with those weights and hands test outputs and
predictions to their writers (writers.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from evaluation import columns_of
from models.metrics import ClassificationMetrics, logged_metric_names
from rundir.layout import PREDICTIONS_FILE
from training.loggers import update_summary
from training.operating_point import (
    CHECKPOINT_KEY,
    OperatingPoint,
    choose_operating_point,
    fixed_operating_point,
    read_checkpoint,
)
from training.options import EvalOptions
from training.writers import publish_report, test_report_of, write_confusion_csv, write_predictions

log = logging.getLogger("cli")


def patient_ids_of(records: Sequence) -> Optional[list[str]]:
    """Patient of each record; None when the data names no patients (each image is then its own
    patient, and the report says so)."""
    if all(r.patient_id == r.rel for r in records):
        log.warning("eval: the data has no patient_id, so each image counts as its own patient; if patients have "
                    "several images (both hands, views), the intervals are too narrow and there are no "
                    "patient-level figures. Add a patient_id column to the manifest.")
        return None
    return [r.patient_id for r in records]


class Evaluation(Callback):
    """The one owner of evaluation state; see the module docstring. Listed before SweepMetric,
    which reads `current_metrics` (callback hooks run in list order)."""

    def __init__(self, run_dir: Path, options: EvalOptions) -> None:
        self.run_dir, self.options = Path(run_dir), options
        self.outputs: dict[str, dict[str, np.ndarray]] = {}  # last epoch's, per stage, each image once
        self.metrics: dict[str, dict[str, torch.Tensor]] = {}
        self.point: Optional[OperatingPoint] = None  # the one test and predict use
        self.quiet = False  # collecting validation outputs to choose on: log nothing
        self.report: Optional[dict] = None
        self._batches: dict[str, list[dict]] = {"val": [], "test": []}
        self._chosen: Optional[tuple[int, OperatingPoint]] = None  # (global step of its weights, point)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.num_classes = int(pl_module.hparams.num_classes)
        self._metric_set = ClassificationMetrics(self.num_classes)

    def metric_names(self, stage: str = "val") -> list[str]:
        return logged_metric_names(self.num_classes, stage)

    def current_metrics(self, stage: str = "val") -> dict[str, torch.Tensor]:
        return self.metrics.get(stage, {})

    # ---- outputs, once per epoch ---------------------------------------------------------------

    def _start(self, stage: str) -> None:
        self._batches[stage] = []
        self.outputs.pop(stage, None)
        self.metrics.pop(stage, None)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start("val")

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start("test")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batches["val"].append(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batches["test"].append(outputs)

    def _gather(self, stage: str, pl_module: pl.LightningModule) -> Optional[dict[str, np.ndarray]]:
        """Every rank's outputs, once per image in dataset order (the padding DistributedSampler
        adds is dropped). Collective under DDP: every rank calls it once per epoch."""
        parts, self._batches[stage] = self._batches[stage], []
        if not parts:
            return None
        logits, labels, index = (torch.cat([p[k] for p in parts]) for k in ("logits", "labels", "index"))
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            logits, labels, index = (pl_module.all_gather(t).flatten(0, 1) for t in (logits, labels, index))
        index_np = index.cpu().numpy()
        _, first = np.unique(index_np, return_index=True)
        self.outputs[stage] = {"logits": logits.float().cpu().numpy()[first],
                               "labels": labels.cpu().numpy()[first], "index": index_np[first]}
        return self.outputs[stage]

    def _log_epoch(self, stage: str, pl_module: pl.LightningModule, out: dict[str, np.ndarray]) -> None:
        """The epoch's figures over every image once, computed by every rank from the same gathered
        outputs, so logged WITHOUT sync_dist. Lightning all-reduces a logged tensor on its own device
        (trainer/connectors/logger_connector/result.py: `self[key].to(value.device)`, then `sync`) and
        NCCL has no CPU backend (Lightning #18803): a CPU value with sync_dist=True killed DDP on GPUs.
        They live on the module's device anyway (tests/test_gpu.py)."""
        logits = torch.from_numpy(out["logits"]).to(pl_module.device)
        labels = torch.from_numpy(out["labels"]).long().to(pl_module.device)
        values = {f"{stage}/loss": pl_module.loss(logits, labels)}
        if stage == "val":
            metrics = self._metric_set.to(pl_module.device)
            metrics.reset()
            metrics.update(logits.softmax(dim=1), labels)
            values.update({f"val/{k}": v for k, v in metrics.compute().items()})
            metrics.reset()
        self.metrics[stage] = values
        if not self.quiet:
            pl_module.log(f"{stage}/loss", values.pop(f"{stage}/loss"), prog_bar=stage == "val", sync_dist=False)
            pl_module.log_dict(values, sync_dist=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._batches["val"] = []
            return
        out = self._gather("val", pl_module)
        if out is None:
            return
        self._log_epoch("val", pl_module, out)
        if trainer.state.fn == "fit":  # for the checkpoints of these weights (on_save_checkpoint)
            finite = np.isfinite(out["logits"]).all()  # diverged weights: RunGuard's to report, nothing to choose
            self._chosen = (trainer.global_step, choose_operating_point(
                out["logits"], out["labels"], self.options, self._patients(trainer.datamodule, "val", out))
            ) if finite else None
        if trainer.is_global_zero:
            confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
            np.add.at(confusion, (out["labels"], out["logits"].argmax(axis=1)), 1)
            write_confusion_csv(self.run_dir / "confusion_val.csv", confusion, pl_module.class_names)

    def _patients(self, datamodule, stage: str, out: dict[str, np.ndarray]) -> Optional[np.ndarray]:
        ids = patient_ids_of(datamodule.records_of(stage))
        return None if ids is None else np.asarray(ids, dtype=object)[out["index"]]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """The only writer of the checkpoint's operating point: the one chosen on validation with
        exactly these weights (a checkpoint saved later in the epoch, e.g. on a stop, gets none)."""
        if self._chosen is not None and self._chosen[0] == checkpoint.get("global_step"):
            checkpoint[CHECKPOINT_KEY] = self._chosen[1].to_dict()

    # ---- the operating point for test and predict --------------------------------------------

    def use_operating_point_of(self, trainer: pl.Trainer, model: pl.LightningModule, datamodule,
                               ckpt_path: Optional[str]) -> None:
        """Use the one stored with the checkpoint's weights when chosen with these settings; else a
        fixed threshold; else one chosen now on validation through those weights."""
        stored = (read_checkpoint(ckpt_path) or {}).get(CHECKPOINT_KEY)
        point = OperatingPoint.from_dict(stored) if stored else None
        if point is None or not point.matches(self.options):
            point = fixed_operating_point(self.options, model.hparams.num_classes)
        if point is None:
            out = self.collect_validation(trainer, model, datamodule, ckpt_path)
            point = choose_operating_point(out["logits"], out["labels"], self.options,
                                           self._patients(datamodule, "val", out)) if out else None
        if point is None and model.hparams.num_classes == 2:
            log.warning("eval.threshold=%s: no validation split to choose it on and none stored in the "
                        "checkpoint; binary decisions use 0.5", self.options.threshold)
        self.use(trainer, point)

    def collect_validation(self, trainer: pl.Trainer, model: pl.LightningModule, datamodule,
                           ckpt_path: Optional[str]) -> Optional[dict[str, np.ndarray]]:
        """The validation outputs of the checkpoint's weights, logging nothing (W&B's hyperband
        must see no extra row). Called by the CLI between runs, never nested in a hook."""
        if not datamodule.has_split("val"):
            return None
        self.quiet = True
        try:
            trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
        finally:
            self.quiet = False
        return self.outputs.get("val")

    def use(self, trainer: pl.Trainer, point: Optional[OperatingPoint]) -> None:
        self.point = point
        if point is None:
            return
        point.warn(self.options)
        summary: dict[str, Any] = {"eval/temperature": point.temperature}
        if point.threshold is not None:
            summary.update({"eval/threshold": point.threshold.value, "eval/threshold_rule": point.threshold.rule,
                            "eval/threshold_fallback": point.threshold.fallback})
        update_summary(trainer, summary)

    # ---- test: the report --------------------------------------------------------------------

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self._gather("test", pl_module)
        if out is not None:
            self._log_epoch("test", pl_module, out)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = self.outputs.get("test")
        if not trainer.is_global_zero or out is None:
            return
        point = self.point or OperatingPoint(None)
        ids = self._patients(trainer.datamodule, "test", out)
        self.report = test_report_of(point.probabilities(out["logits"]), out["labels"], ids, pl_module.class_names,
                                     point, self.options, columns_of(trainer.datamodule.records_of("test"), out["index"]))
        publish_report(self.report, self.run_dir, trainer, pl_module.class_names)


class PredictionWriter(BasePredictionWriter):
    """predictions.csv (predictions-rank{R}.csv under DDP): path relative to the data root, the
    true label when known, one probability column per class, and the decision at the operating
    point the Evaluation uses."""

    def __init__(self, run_dir: Path, evaluation: Evaluation) -> None:
        super().__init__(write_interval="epoch")
        self.run_dir, self.evaluation = Path(run_dir), evaluation

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        point = self.evaluation.point or OperatingPoint(None)
        suffix = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        records, rows = trainer.datamodule.records_of("predict"), []
        for batch in predictions:
            probs = point.probabilities(batch["logits"].float().cpu().numpy())
            rows += [(records[i].rel, records[i].label, p) for i, p in zip(batch["index"].tolist(), probs)]
        path = self.run_dir / PREDICTIONS_FILE.replace(".csv", f"{suffix}.csv")
        write_predictions(path, rows, pl_module.class_names, point)
