"""Every run writes into a directory of its own: runs/<experiment>/<name>/. A run continued
from its last checkpoint (`fit --ckpt_path <run dir>/checkpoints/last.ckpt`) writes into the
same directory, so that its files, and its sweep-metric history, stay one run."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Optional

from rundir.layout import CHECKPOINT_DIR, CONFIG_FILE


class RunDirError(ValueError):
    """No run directory can be made under run.root; cli.py prints it as one `error:` paragraph."""

    def __init__(self, where: Path, error: OSError) -> None:
        super().__init__(f"cannot create a run directory under {where}: {error.strerror or error} "
                         "(set --run.root to a writable folder)")


def make_run_dir(root: Path, experiment: str, name: Optional[str]) -> Path:
    """A fresh directory for this run; never reuses one (SaveConfigCallback would refuse it)."""
    base = name or os.environ.get("WANDB_RUN_ID") or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    try:
        (root / experiment).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only, a file where a folder goes, no space: not a traceback
        raise RunDirError(root / experiment, e) from None
    for i in range(1, 1000):
        candidate = root / experiment / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()  # atomic: concurrent runs never share a directory
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(root / experiment, e) from None
    raise FileExistsError(f"Too many runs named {base} under {root / experiment}")


def resumed_run_dir(ckpt_path: Optional[str]) -> Optional[Path]:
    """The run directory a checkpoint belongs to (`<run dir>/checkpoints/X.ckpt` next to the
    run's config.yaml), which a resumed fit continues; None for a checkpoint from elsewhere."""
    if not ckpt_path:
        return None
    path = Path(ckpt_path).expanduser()
    run_dir = path.parent.parent
    # last.ckpt continues the run; resuming from another checkpoint (best-*) starts a branch elsewhere
    if path.name.startswith("last") and path.parent.name == CHECKPOINT_DIR and (run_dir / CONFIG_FILE).is_file():
        return run_dir.resolve()
    return None
