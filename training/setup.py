"""What a run needs before its classes are built: readable config files, the precision for
this machine, and the built-in demo data set."""

from __future__ import annotations

from pathlib import Path

from training.options import DemoOptions


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


def ensure_demo_data(root: str, demo: DemoOptions, seed: int) -> None:
    """Generate the built-in demo data set into `root` when it is missing or empty."""
    path = Path(root).expanduser()
    if demo.body_part is None or (path.is_dir() and any(path.iterdir())):
        return
    from datamodules.synthetic import generate

    generate(path, body_part=demo.body_part, count=demo.count, size=(demo.size, demo.size), seed=seed,
             severity=demo.severity)
