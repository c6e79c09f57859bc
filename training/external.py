"""External validation and what a finished test leaves beside test_report.json (README
"External validation", "Model card"): site B is scored whole at site A's operating point.
The CLI builds `TestPlan(cli, ckpt_path)` before its test (everything checked before anything
runs) and calls `plan.finish()` after it."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.datasets import XrayDataset
from datamodules.readers import is_dicom
from datamodules.records import DataError, Record, read_manifest, scan_folder
from datamodules.splits import check_labels
from datamodules.transforms import ResizePad
from evaluation import check_columns, columns_of, summary_metrics
from evaluation.external import compare_reports, format_comparison
from evaluation.model_card import CARD_FILE, model_card_text
from rundir.atomic import write_atomic
from rundir.layout import CONFIG_FILE, TEST_REPORT
from training.ensemble import read_cv_run
from training.evaluate import patient_ids_of
from training.loggers import update_summary
from training.operating_point import OperatingPoint, read_checkpoint
from training.writers import test_report_of, write_report

SIZE_SAMPLE = 200  # image headers read for the card's sizes: enough to show the range, cheap on any data set
EXTERNAL_NAME = "external"  # the site's label in reports: never its path (it may name a hospital or a patient)


def check_not_internal(external: list[Record], internal: list[Record], spec: str) -> None:
    """An external test of images the model was trained, tuned or tested on would measure nothing
    external (a careless --eval.external=<data.root>): refused, with counts, never file names."""
    own = {os.path.realpath(r.path): r.split for r in internal}
    shared = Counter(own[p] for p in (os.path.realpath(r.path) for r in external) if p in own)
    if shared:
        splits = ", ".join(f"{n} {split}" for split, n in sorted(shared.items()))
        raise DataError(f"eval.external={spec} holds {sum(shared.values())} of this model's own images ({splits}): "
                        "an external test needs another site's data, none of data.root's images")


class ExternalData(pl.LightningDataModule):
    """The external records, read and normalised exactly as site A's test images are."""

    def __init__(self, records: list[Record], datamodule) -> None:
        super().__init__()
        self.records, self.internal = records, datamodule

    def predict_dataloader(self) -> DataLoader:
        hp = self.internal.hparams
        dataset = XrayDataset(self.records, self.internal.class_index, transform=ResizePad(hp.image_size))
        return DataLoader(dataset, batch_size=hp.batch_size, num_workers=hp.num_workers)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, *rest = batch
        return [self.internal.batch_transform(x, train=False), *rest]


def check_same_data(ckpt_path: Optional[str], datamodule) -> None:
    """`test --data.root=<site B>` would split site B and test a part of it with site A's model:
    refused while site A's data is still where the model was trained on it (moved data is allowed)."""
    trained = (read_checkpoint(ckpt_path) or {}).get("datamodule_hyper_parameters") or {}
    if not trained.get("root"):
        return
    then, now = Path(str(trained["root"])).expanduser(), Path(datamodule.root)
    if then.is_dir() and then.resolve() != now.resolve():
        raise DataError(f"data.root {now} is not the data the checkpoint was trained on ({then}): test would split "
                        "it and evaluate a part of it. To evaluate the model on another site's data keep data.root "
                        f"and give --eval.external={now} (the whole set, site A's operating point)")


def external_records(cli) -> Optional[list[Record]]:
    """Every image of eval.external (a folder or manifest) as test records, checked: one device,
    labels the model knows, none of its own images, the subgroup columns. `fit` asks before
    training, so a bad set costs no training."""
    options, outside = cli.config_init[cli.subcommand].eval, cli.datamodule.hparams.allow_outside_root
    if not options.external:
        return None
    if cli.trainer.world_size > 1:
        raise ValueError("eval.external is scored on one device: give --trainer.devices=1")
    spec, path = options.external, Path(options.external).expanduser()
    manifest = path if path.is_file() else path / "manifest.csv"
    if manifest.is_file():
        records = read_manifest(manifest, manifest.parent, allow_outside_root=outside)
    elif path.is_dir():
        records = scan_folder(path, allow_outside_root=outside)
    else:
        raise DataError(f"eval.external={spec}: neither a data folder nor a manifest file")
    if not records:
        raise DataError(f"eval.external={spec}: no images found")
    check_labels(records, list(cli.model.class_names), str(path))  # a label the model does not know: refused
    # The whole set is external test data (a split column there is ignored).
    records = [Record(r.path, r.rel, r.label, r.patient_id, "test", r.columns) for r in records]
    check_not_internal(records, cli.datamodule.records, spec)
    check_columns(options.subgroups, records, str(path))
    return records


class TestPlan:
    """What one `test` does besides the Evaluation callback's report: checked in the constructor."""

    def __init__(self, cli, ckpt_path: Optional[str]) -> None:
        cfg = cli.config_init[cli.subcommand]
        self.cli, self.options = cli, cfg.eval
        self.cv_run = Path(cfg.cv.run_dir) if cli.subcommand == "test" and cfg.cv.run_dir else None
        self.checkpoints: list[Optional[str]] = [ckpt_path]
        self.point: Optional[OperatingPoint] = None
        if self.cv_run is not None:  # the fold ensemble: its operating point chosen out of fold
            self.point, paths = read_cv_run(self.cv_run, cli.model)
            self.checkpoints = [str(p) for p in paths]
        for ckpt in self.checkpoints:
            check_same_data(ckpt, cli.datamodule)
        self.records = external_records(cli)

    def finish(self) -> None:
        cli = self.cli
        if not cli.trainer.is_global_zero:
            return
        if self.cv_run is not None:
            report = json.loads((self.cv_run / TEST_REPORT).read_text())
        else:
            report, self.point = cli.evaluation.report, cli.evaluation.point
        if report is None:
            return  # no test split: nothing to compare or describe
        report["data"] = data_summary(cli.datamodule)
        saved = [c for c in map(read_checkpoint, self.checkpoints) if c is not None]  # the epochs tested
        report["training"] = {"models": len(self.checkpoints),
                              "best_epoch": [int(c.get("epoch", -1)) + 1 for c in saved]}
        if self.records is not None:
            external = self.external_report()
            comparison = compare_reports(report, external)
            report["external"] = [{"name": EXTERNAL_NAME, "report": external, "comparison": comparison}]
            summary = summary_metrics(external, prefix=f"{EXTERNAL_NAME}/")
            update_summary(cli.trainer, {k: v for k, v in summary.items() if np.isfinite(v)})
            print(f"\n{format_comparison(comparison, EXTERNAL_NAME)}", flush=True)
        config = cli.run_dir / CONFIG_FILE  # the model card beside the report, from both
        card = model_card_text(write_report(report, cli.run_dir),
                               config.read_text() if config.is_file() else None, cli.run_dir.parent.name)
        write_atomic(cli.run_dir / CARD_FILE, card)

    def external_report(self) -> dict:
        """The external set scored at site A's operating point (the fold ensemble's mean for a CV run)."""
        point = self.point or OperatingPoint(None)
        data = ExternalData(self.records, self.cli.datamodule)
        probs, index = [], None
        for ckpt in self.checkpoints:
            logits, index = _predict(self.cli, data, ckpt)
            probs.append(point.probabilities(logits))
        ids = patient_ids_of(self.records)
        ids = None if ids is None else np.asarray(ids, dtype=object)[index]
        labels = np.asarray([self.cli.datamodule.class_index[self.records[i].label] for i in index])
        report = test_report_of(np.mean(probs, axis=0), labels, ids, self.cli.model.class_names, point,
                                self.options, columns_of(self.records, index))
        report["split"] = EXTERNAL_NAME
        return report


def _predict(cli, data: ExternalData, ckpt: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    """Logits in record order, from a Trainer of its own (no callbacks: nothing of the run's
    writers or loggers sees the external images) at the run's precision and accelerator."""
    accelerator = cli.config_init[cli.subcommand].trainer.get("accelerator") or "auto"
    trainer = pl.Trainer(accelerator=accelerator, devices=1, precision=cli.trainer.precision, logger=False,
                         callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    if ckpt:  # the weights alone (the run's trainer state and callbacks are not this trainer's)
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["state_dict"]
        cli.model.load_state_dict(state)
    batches = trainer.predict(cli.model, datamodule=data, return_predictions=True)
    logits = np.concatenate([b["logits"].float().cpu().numpy() for b in batches])
    index = np.concatenate([b["index"].cpu().numpy() for b in batches])
    order = np.argsort(index)
    return logits[order], index[order]


def header_size(path: Path) -> Optional[tuple[int, int]]:
    """(rows, cols) from the file's header alone; DICOM: only Rows and Columns are parsed."""
    try:
        if is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            return int(ds.Rows), int(ds.Columns)
        from PIL import Image

        with Image.open(path) as img:
            return img.height, img.width
    except Exception:  # an unreadable header only leaves the image out of the sizes shown
        return None


def data_summary(datamodule) -> dict:
    """Counts per split and class, patients, how the splits were made, formats and sizes."""
    hp, names = datamodule.hparams, list(datamodule.class_names)
    splits = {}
    for split, records in datamodule.split_records.items():
        per_class = Counter(r.label for r in records)
        patients = {n: len({r.patient_id for r in records if r.label == n}) for n in names}
        splits[split] = {"images": len(records), "patients": len({r.patient_id for r in records}),
                         "images_per_class": {n: per_class.get(n, 0) for n in names}, "patients_per_class": patients}
    records = datamodule.records
    step = max(1, len(records) // SIZE_SAMPLE)
    sizes = [s for s in (header_size(Path(r.path)) for r in records[::step]) if s is not None]
    source = Path(datamodule.source)
    given = any((Path(datamodule.root) / s).is_dir() for s in ("train", "val", "test"))
    if source.is_file():  # a manifest: its header names a split column
        with open(source, newline="", errors="replace") as f:
            given = given or "split" in [c.strip() for c in f.readline().split(",")]
    return {
        "layout": "manifest" if source.is_file() else "folders",
        "splits": splits,
        "split_method": {"given_in_data": bool(given), "seed": hp.split_seed, "val_fraction": hp.val_fraction,
                         "test_fraction": hp.test_fraction, "folds": hp.folds},
        "patient_ids": any(r.patient_id != r.rel for r in records),
        "formats": dict(Counter(os.path.splitext(str(r.path))[1].lower().lstrip(".") for r in records)),
        "image_sizes": {"sampled": len(sizes), "min": list(min(sizes)) if sizes else None,
                        "max": list(max(sizes)) if sizes else None,
                        "most_common": list(Counter(sizes).most_common(1)[0][0]) if sizes else None},
        "input_size": hp.image_size,
        "skipped_unreadable": len(getattr(datamodule, "skipped", [])),
    }
