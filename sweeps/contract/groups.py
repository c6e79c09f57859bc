"""The CLI's option groups and the options it links: the one list that training/cli.py builds
its parser from and that sweep parameters are checked against (README, "Architecture"). Classes
are named by import path, so that the sweep tools read the list without importing torch.
"""

from __future__ import annotations

import importlib

# group -> the class whose __init__ signature (or dataclass fields) is that group's schema
GROUPS = {
    "trainer": "lightning.pytorch:Trainer",
    "model": "models.classifier:XrayClassifier",
    "data": "datamodules.datamodule:XrayDataModule",
    "run": "training.options:RunOptions",
    "sweep": "sweeps.contract.options:SweepOptions",
    "demo": "training.options:DemoOptions",
    "eval": "training.options:EvalOptions",
    "cv": "training.options:CVOptions",
}
# LightningCLI adds these from the classes it is given; the CLI adds the other groups itself.
LIGHTNING_GROUPS = ("trainer", "model", "data")
# (source, target): the target is set from the data module when the classes are built, so it
# is not a free option (nor a sweep parameter).
LINKS = (
    ("data.num_classes", "model.num_classes"),
    ("data.class_names", "model.class_names"),
    ("data.class_weights", "model.class_weights"),
)


def load(group: str) -> type:
    """The class behind an option group."""
    module, name = GROUPS[group].split(":")
    return getattr(importlib.import_module(module), name)


def added_groups() -> list[tuple[str, type]]:
    """(group, class) of each group the CLI adds to LightningCLI's parser."""
    return [(group, load(group)) for group in GROUPS if group not in LIGHTNING_GROUPS]
