"""The built-in demo data set (`demo.*` options, configs/demo.yaml; README "Training"): generated on first use
into data.root by datamodules/synthetic.py, with the settings it was made with beside it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("cli")

DEMO_RECORD = "demo.json"  # in the demo folder: the settings it was generated with


def ensure_demo_data(root: str, demo, seed: int) -> None:
    """Generate the built-in demo data set into `root` when it is missing or empty (`demo`: the
    demo.* options, training.options.DemoOptions). A folder generated before with other demo.*
    settings is kept (it is never deleted for the user), with a warning that names the
    difference and how to regenerate."""
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
