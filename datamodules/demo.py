"""The built-in demo data set (`demo.*` options, configs/demo.yaml; README "Training"): generated on first use
into data.root by datamodules/synthetic.py, which records the settings it was made with beside it."""

from __future__ import annotations

from pathlib import Path


def ensure_demo_data(root: str, demo, seed: int) -> None:
    """Generate the built-in demo data set into `root` unless it holds it already (`demo`: the
    demo.* options, training.options.DemoOptions); a folder holding anything else is an error."""
    if demo.body_part is None:
        return
    from datamodules.records import DataError
    from datamodules.synthetic import generate

    try:
        generate(Path(root).expanduser(), body_part=demo.body_part, count=demo.count, size=(demo.size, demo.size),
                 seed=seed, severity=demo.severity)
    except DataError as e:
        raise DataError(f"{e} (the demo's settings are demo.*, its seed data.split_seed; demo.body_part=null "
                        "trains on data.root as it is)") from None
