"""Conditional sweep parameters, resolved on the program side because W&B sweep files have none
(README, "How the sweep files work with LightningCLI": "Conditional parameters")."""

from __future__ import annotations

from typing import Any

WHEN_PREFIX = "--sweep.when"


def parse_condition(spec: str) -> tuple[str, str, list[str]]:
    """'CHILD:PARENT=V1|V2' -> (child, parent, [V1, V2])."""
    child, _, rest = spec.partition(":")
    parent, _, values = rest.partition("=")
    if not child or not parent or not values:
        raise ValueError(f"sweep.when {spec!r} is not of the form CHILD:PARENT=VALUE1|VALUE2")
    return child.strip(), parent.strip(), [v.strip() for v in values.split("|")]


def format_condition(child: str, parent: str, values: list[Any]) -> str:
    return f"{WHEN_PREFIX}+={child}:{parent}={'|'.join(format_value(v) for v in values)}"


def format_value(value: Any) -> str:
    """How a value is compared: as the W&B agent would put it on the command line."""
    if value is None:
        return "null"
    return str(value)


def drop_argument(args: list[str], key: str) -> list[str]:
    """`args` without `--key=value` and `--key value`."""
    flag = f"--{key}"
    return [arg for i, arg in enumerate(args) if arg != flag and not arg.startswith(flag + "=")
            and not (i > 0 and args[i - 1] == flag and not arg.startswith("--"))]


def apply_conditions(args: list[str], cfg: Any) -> tuple[list[str], list[str]]:
    """Returns the arguments without the children whose condition fails, and a note for each."""
    specs = cfg.get("sweep.when") or []
    notes = []
    for spec in specs:
        child, parent, allowed = parse_condition(spec)
        parent_value = format_value(cfg.get(parent))
        if parent_value in allowed:
            continue
        without = drop_argument(args, child)
        if without != args:
            notes.append(f"{child} not applied: it applies only when {parent} is one of {allowed}, not {parent_value}")
            args = without
    return args, notes
