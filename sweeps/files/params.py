"""Parameter names: the CLI paths a sweep may set and the old tool's yacs aliases. The paths
are read from the classes of the CLI's option groups (sweeps/contract/groups.py, the list the
CLI builds its parser from): their signatures and dataclass fields. Those classes, and with
them torch, are imported only when the names are checked."""

from __future__ import annotations

import difflib
import inspect
import logging
import typing
from dataclasses import fields, is_dataclass
from typing import Any, Optional

from sweeps.contract.groups import GROUPS, LINKS, load
from sweeps.errors import ParameterError

log = logging.getLogger(__name__)

# The old yacs-based tool's names -> our CLI paths, so its users' sweeps keep working.
YACS_ALIASES = {
    "TRAIN.LR": "model.lr",
    "TRAIN.BASE_LR": "model.lr",
    "TRAIN.WD": "model.weight_decay",
    "TRAIN.WEIGHT_DECAY": "model.weight_decay",
    "TRAIN.OPTIMIZER": "model.optimizer",
    "TRAIN.MOMENTUM": "model.momentum",
    "TRAIN.LR_SCHEDULER": "model.scheduler",
    "TRAIN.SCHEDULER": "model.scheduler",
    "TRAIN.WARMUP_EPOCHS": "model.warmup_epochs",
    "TRAIN.LABEL_SMOOTHING": "model.label_smoothing",
    "TRAIN.BATCH_SIZE_PER_GPU": "data.batch_size",
    "TRAIN.BATCH_SIZE": "data.batch_size",
    "TRAIN.END_EPOCH": "trainer.max_epochs",
    "TRAIN.EPOCHS": "trainer.max_epochs",
    "TRAIN.BALANCING": "data.balancing",
    "TRAIN.SAMPLER": "data.balancing",
    "MODEL.NAME": "model.backbone",
    "MODEL.BACKBONE": "model.backbone",
    "MODEL.DROPOUT": "model.dropout",
    "MODEL.IMAGE_SIZE": "data.image_size",
    "MODEL.PRETRAINED": "model.weights",
    "DATASET.ROOT": "data.root",
    "DATA.BALANCING": "data.balancing",
    "WORKERS": "data.num_workers",
}

def _signature_params(cls: type, prefix: str) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    return {
        f"{prefix}.{name}": hints.get(name, Any)
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def cli_parameters() -> dict[str, Any]:
    """Every CLI path a sweep may set, with its type annotation (linked options are not free)."""
    paths: dict[str, Any] = {"seed_everything": int}
    for group in GROUPS:
        cls = load(group)
        if is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            paths.update({f"{group}.{f.name}": hints[f.name] for f in fields(cls)})
        else:
            paths.update(_signature_params(cls, group))
    linked = {target for _, target in LINKS}
    return {k: v for k, v in paths.items() if k not in linked}


def choices(annotation: Any) -> Optional[tuple]:
    """The allowed values of a Literal[...] (also inside Optional), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(annotation):
            found = choices(arg)
            if found:
                return (*found, None) if type(None) in typing.get_args(annotation) else found
    return None


def resolve_name(name: str, known: Optional[dict[str, Any]] = None) -> str:
    """A CLI path for `name`: accepted as is, mapped from a yacs alias (with a notice), or an
    error that suggests the closest valid paths."""
    known = known if known is not None else cli_parameters()
    if name in known:
        return name
    alias = YACS_ALIASES.get(name) or YACS_ALIASES.get(name.upper())
    if alias:
        log.warning("sweep parameter %s is the old tool's name; using %s", name, alias)
        return alias
    close = difflib.get_close_matches(name, list(known) + list(YACS_ALIASES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ParameterError(
        f"Unknown sweep parameter {name!r}: parameters are CLI paths such as model.lr, data.batch_size, "
        f"trainer.max_epochs.{hint}"
    )
