"""What a run needs before its classes are built: readable config files, the precision for
this machine, and the built-in demo data set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from training.options import DemoOptions

log = logging.getLogger("cli")


def check_config_files(args: list[str]) -> None:
    """Name the file when a --config is not valid YAML (jsonargparse only says where in it)."""
    import yaml

    for flag, value in zip(args, args[1:]):
        if flag in ("--config", "-c") and Path(value).is_file():
            try:
                yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError as e:
                raise ValueError(f"config file {value} is not valid YAML: {e}") from None


def default_precision() -> str:
    """bf16 autocast on GPUs that support it (fast, no loss scaling), full precision elsewhere."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


DEMO_RECORD = "demo.json"  # in the demo folder: the settings it was generated with


def ensure_demo_data(root: str, demo: DemoOptions, seed: int) -> None:
    """Generate the built-in demo data set into `root` when it is missing or empty. A folder
    generated before with other demo.* settings is kept (it is never deleted for the user), with a
    warning that names the difference and how to regenerate."""
    path = Path(root).expanduser()
    if demo.body_part is None:
        return
    wanted = {"body_part": demo.body_part, "count": demo.count, "size": demo.size, "severity": demo.severity,
              "seed": seed}
    if path.is_dir() and any(path.iterdir()):
        try:
            made = json.loads((path / DEMO_RECORD).read_text())
        except (OSError, ValueError):
            return  # not made by this version (or not by the demo at all): nothing to compare
        if not isinstance(made, dict):
            return
        differ = {k: (made.get(k), v) for k, v in wanted.items() if made.get(k) != v}
        if differ:
            log.warning("demo data in %s was generated with other settings (%s): it is used as it is; delete "
                        "the folder to generate it with these", path,
                        ", ".join(f"demo.{k} {old} here, {new} asked" for k, (old, new) in differ.items()))
        return
    from datamodules.synthetic import generate

    generate(path, body_part=demo.body_part, count=demo.count, size=(demo.size, demo.size), seed=seed,
             severity=demo.severity)
    (path / DEMO_RECORD).write_text(json.dumps(wanted))
