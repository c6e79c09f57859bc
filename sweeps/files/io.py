"""The one loader of W&B sweep files: it refuses at load what would explode later and parses the
rest into a Sweep; and the JSON files of a sweep, written atomically (rundir/atomic.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from rundir.atomic import write_atomic
from sweeps.errors import SweepConfigError, UsageError
from sweeps.files.sweep import Sweep


def write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str))


# W&B sweep files are a few kilobytes. These caps refuse, at load time and naming the file, what
# would otherwise explode later: a "billion laughs" of nested aliases is a few hundred bytes and
# expands to billions of nodes when the agent's argv or a copy of the sweep is built.
MAX_SWEEP_BYTES = 1 << 20
MAX_NODES = 100_000  # YAML nodes once aliases are expanded
MAX_VALUES = 10_000  # values of one parameter
MAX_DEPTH = 64  # nesting levels (a sweep file has about 5)


class _TooLarge(yaml.YAMLError):
    pass


# A bracket outside comments and quoted scalars (a quote opens a scalar only where one may start).
_FLOW = re.compile(r"""(?:^|(?<=\s))#[^\n]*|(?:^|(?<=[\s\[{,:]))(?:'(?:[^']|'')*'|"(?:[^"\\]|\\.)*")|[\[\]{}]""",
                   re.MULTILINE | re.DOTALL)


def _check_flow_depth(text: str) -> None:
    """Refuse [ ] / { } nested deeper than MAX_DEPTH before PyYAML scans them: its scanner looks
    ahead for a key at every bracket, slower the deeper it is (5,000 brackets: 0.3 s on an idle
    machine, over 10 s on a busy one), before the composer (below) could count the levels."""
    depth = 0
    for match in _FLOW.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _TooLarge(f"it is nested too deeply (more than {MAX_DEPTH} levels of [ ] or {{ }}) to be a sweep")
        elif token in "]}":
            depth = max(depth - 1, 0)


def _expanded_size(node: yaml.Node, memo: dict) -> int:
    """Nodes of the document once every alias is replaced by what it names (shared nodes count
    each time they are used); stops as soon as the count passes MAX_NODES."""
    key = id(node)
    if key in memo:
        if memo[key] is None:
            raise _TooLarge("an alias refers to a node that contains it (a recursive structure)")
        return memo[key]
    memo[key] = None
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    size = 1
    for child in children:
        size += _expanded_size(child, memo)
        if size > MAX_NODES:
            raise _TooLarge(f"it expands to more than {MAX_NODES:,} YAML nodes (nested aliases, "
                            "a 'billion laughs'?); write the values out")
    memo[key] = size
    return size


class _SweepLoader(yaml.SafeLoader):
    """yaml.SafeLoader that measures the document, aliases expanded, before building it."""

    depth = 0

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _expanded_size(node, {})
        return node

    def compose_node(self, parent, index) -> yaml.Node:
        # Block nesting ("- - - x") and what the bracket count missed, refused as the composer
        # reaches it rather than at Python's recursion limit.
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooLarge(f"it is nested too deeply (more than {MAX_DEPTH} levels) to be a sweep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_sweep(path: str | os.PathLike) -> Sweep:
    """A W&B sweep file, parsed and checked; a clear error naming the file for one that is
    missing, not a sweep, too large, or that W&B would refuse."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SWEEP_BYTES + 1)
    except OSError as e:
        raise UsageError(f"Cannot read sweep file {path}: {e.strerror}") from e
    if len(data) > MAX_SWEEP_BYTES:
        raise UsageError(f"Sweep file {path} is larger than {MAX_SWEEP_BYTES >> 20} MiB; W&B sweep files are a "
                         "few kilobytes")
    try:
        text = data.decode("utf-8")
        _check_flow_depth(text)
        sweep = yaml.load(text, Loader=_SweepLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError:
        raise UsageError(f"Sweep file {path} is not UTF-8 text") from None
    except _TooLarge as e:
        raise UsageError(f"Sweep file {path} is refused: {e}") from None
    except RecursionError:
        raise UsageError(f"Sweep file {path} is nested too deeply to be a sweep") from None
    except yaml.YAMLError as e:
        raise UsageError(f"Sweep file {path} is not valid YAML: {e}") from e
    if not isinstance(sweep, dict) or "parameters" not in sweep or "method" not in sweep:
        raise UsageError(f"Sweep file {path} lacks `method` and `parameters`; is it a W&B sweep file?")
    parameters = sweep["parameters"] if isinstance(sweep["parameters"], dict) else {}
    for name, spec in parameters.items():
        values = spec.get("values") if isinstance(spec, dict) else None
        if isinstance(values, list) and len(values) > MAX_VALUES:
            raise UsageError(f"Sweep file {path}: parameters.{name} has {len(values):,} values, more than "
                             f"{MAX_VALUES:,}; use a distribution (min/max) instead")
    try:
        return Sweep.from_dict(sweep)
    except SweepConfigError as e:
        raise SweepConfigError(f"Sweep file {path}: {e}") from None
