"""Parameter names: the CLI paths a sweep may set, the values a Literal option allows, and the
old tool's yacs aliases. Read from the SOURCE of the option groups' classes (sweeps/contract/
groups.py), not imported, so that `python -m sweeps generate` starts without torch and Lightning."""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional

from sweeps.contract.groups import GROUPS, LINKS
from sweeps.errors import ParameterError

log = logging.getLogger(__name__)

# The old yacs-based tool's names of each CLI path, so that its users' sweeps keep working.
YACS_ALIASES = {alias: path for path, aliases in {
    "model.lr": ("TRAIN.LR", "TRAIN.BASE_LR"),
    "model.weight_decay": ("TRAIN.WD", "TRAIN.WEIGHT_DECAY"),
    "model.optimizer": ("TRAIN.OPTIMIZER",),
    "model.momentum": ("TRAIN.MOMENTUM",),
    "model.scheduler": ("TRAIN.LR_SCHEDULER", "TRAIN.SCHEDULER"),
    "model.warmup_epochs": ("TRAIN.WARMUP_EPOCHS",),
    "model.label_smoothing": ("TRAIN.LABEL_SMOOTHING",),
    "data.batch_size": ("TRAIN.BATCH_SIZE_PER_GPU", "TRAIN.BATCH_SIZE"),
    "trainer.max_epochs": ("TRAIN.END_EPOCH", "TRAIN.EPOCHS"),
    "data.balancing": ("TRAIN.BALANCING", "TRAIN.SAMPLER", "DATA.BALANCING"),
    "model.backbone": ("MODEL.NAME", "MODEL.BACKBONE"),
    "model.dropout": ("MODEL.DROPOUT",),
    "data.image_size": ("MODEL.IMAGE_SIZE",),
    "model.weights": ("MODEL.PRETRAINED",),
    "data.root": ("DATASET.ROOT",),
    "data.num_workers": ("WORKERS",),
}.items() for alias in aliases}

Choices = Optional[tuple]  # the values an option allows; None: any value of its type


def cli_parameters() -> dict[str, Choices]:
    """Every CLI path a sweep may set, with the values it allows when it is a Literal (linked
    options are not free)."""
    paths: dict[str, Choices] = {"seed_everything": None}
    for group, target in GROUPS.items():
        module, name = target.split(":")
        paths.update({f"{group}.{option}": _choices(annotation, where)
                      for option, (annotation, where) in _options(module, name).items()})
    linked = {target for _, target in LINKS}
    return {k: v for k, v in paths.items() if k not in linked}


@functools.cache
def _source(module: str) -> tuple[ast.Module, bool]:
    """A module's syntax tree, found without importing it (nor its package), and whether it is a package."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level name is looked up, not imported
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        raise LookupError(module)
    path = Path(next(iter(spec.submodule_search_locations or [spec.origin]))).joinpath(*rest)
    package = path.is_dir()
    path = path / "__init__.py" if package else path.with_suffix(".py")
    try:
        return ast.parse(path.read_text(encoding="utf-8")), package
    except (OSError, SyntaxError, ValueError):
        raise LookupError(module) from None


def _find(module: str, name: str, depth: int = 0) -> tuple[ast.AST, str]:
    """What `name` is bound to at the top level of `module` (a class, or an assigned value such as
    a Literal alias) and the module that defines it, following `from X import name`."""
    tree, package = _source(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, module
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value, module
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name \
                and node.value is not None:
            return node.value, module
        if isinstance(node, ast.ImportFrom) and depth < 10:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    parts = module.split(".")[: len(module.split(".")) + package - node.level] if node.level else []
                    return _find(".".join([*parts, *([node.module] if node.module else [])]), alias.name, depth + 1)
    raise LookupError(f"{module}.{name}")


def _options(module: str, name: str) -> dict[str, tuple[Optional[ast.expr], str]]:
    """option -> (its annotation, the module it is written in): a dataclass's fields, or the
    arguments of the class's own __init__ (what LightningCLI reads)."""
    try:
        cls, where = _find(module, name)
    except LookupError:
        cls, where = None, module
    if not isinstance(cls, ast.ClassDef):
        raise ParameterError(f"option group class {module}:{name} (sweeps/contract/groups.py) is not a class "
                             "defined in Python source")
    if any("dataclass" in ast.unparse(d) for d in cls.decorator_list):
        return {n.target.id: (n.annotation, where) for n in cls.body if isinstance(n, ast.AnnAssign)
                and isinstance(n.target, ast.Name) and "ClassVar" not in ast.unparse(n.annotation)}
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        raise ParameterError(f"option group class {module}:{name} has no __init__ of its own to read options from")
    args = [*init.args.posonlyargs, *init.args.args][1:] + init.args.kwonlyargs  # without self
    return {a.arg: (a.annotation, where) for a in args}


def _choices(node: Optional[ast.expr], module: str, depth: int = 0) -> Choices:
    """The values a Literal annotation allows (also inside Optional/Union and through aliases);
    None when any other type may take part."""
    if node is None or depth > 10:
        return None
    if isinstance(node, ast.Constant):
        return (None,) if node.value is None else None
    if isinstance(node, ast.Name):
        try:
            value, where = _find(module, node.id)
        except LookupError:
            return None  # a builtin or a class: any value of that type
        return None if isinstance(value, ast.ClassDef) else _choices(value, where, depth + 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], module, depth)
    if isinstance(node, ast.Subscript):
        kind = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", None)
        items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if kind == "Literal":
            try:
                return tuple(ast.literal_eval(item) for item in items)
            except ValueError:
                return None
        if kind in ("Optional", "Union"):
            return _union(items + [ast.Constant(None)] * (kind == "Optional"), module, depth)
    return None


def _union(items: list[ast.expr], module: str, depth: int) -> Choices:
    found: list = []
    for item in items:
        values = _choices(item, module, depth + 1)
        if values is None:
            return None
        found += [v for v in values if v not in found]
    return tuple(found)


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
