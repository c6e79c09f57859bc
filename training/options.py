"""The CLI's option groups run.*, demo.*, eval.* and cv.* (registered in sweeps/contract/groups.py):
plain dataclasses whose fields and docstrings are the schema and the `--help` text."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Literal, Optional

from models.metrics import DEFAULT_METRIC
from rundir.slots import MAX_RUNS_PER_DEVICE


@dataclass
class RunOptions:
    """Where a run writes and how it logs.

    Args:
        root: runs go to root/<experiment>/<name>/.
        experiment: default: the stem of the first --config file.
        name: run directory name; default: W&B run id under an agent, else a timestamp.
            A taken name gets a suffix, so a second identical command never collides.
        wandb: auto (online under a W&B agent, else offline), online (falls back to offline
            when not logged in), offline (sync later with `wandb sync`), or disabled.
        project: W&B project; default: $WANDB_PROJECT, else xray-classifier.
        entity: W&B entity (team or user); default: the logged-in user's.
        monitor: metric that selects the best checkpoint.
        monitor_mode: max or min.
        test_after_fit: evaluate the best checkpoint on the test split after fit.
        log_images: log a few validation images to W&B (pixels only, never DICOM headers).
    """

    root: str = "runs"
    experiment: Optional[str] = None
    name: Optional[str] = None
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: Optional[str] = None
    entity: Optional[str] = None
    monitor: str = DEFAULT_METRIC
    monitor_mode: Literal["max", "min"] = "max"
    test_after_fit: bool = True
    log_images: bool = False


@dataclass
class DemoOptions:
    """The built-in synthetic data set, generated into data.root before the data is read
    when that folder is empty or missing (no patient data, nothing downloaded).

    Args:
        body_part: hand or foot phantoms; null: no demo data (the default).
        count: number of images.
        size: side of the generated images in pixels.
        severity: scale of the disease signs (1.0 subtle, 2.0 plain).
    """

    body_part: Optional[Literal["hand", "foot"]] = None
    count: int = 400
    size: int = 256
    severity: float = 1.0


MIN_RESAMPLES, MAX_RESAMPLES = 100, 100_000
MAX_SEED = 2**32 - 1


@dataclass
class EvalOptions:
    """How test figures are made: the operating point comes from VALIDATION, never from test.

    Args:
        threshold: binary tasks' operating point on the positive-class probability, chosen on
            the validation split at the end of fit (best checkpoint): youden (max sensitivity +
            specificity - 1), sensitivity:0.90 (highest specificity with validation sensitivity
            >= 0.90), specificity:0.95 (highest sensitivity with specificity >= 0.95), or a
            fixed number in (0, 1) such as 0.5. Used by test, predict and the test after fit.
        temperature_scaling: fit a temperature on the validation logits (calibration) before
            the threshold is chosen.
        patient_aggregation: how a patient's images combine into patient-level figures: max
            (a patient is positive when any image is; the default) or mean (all images show
            the same finding, e.g. several views of one hand). The patient-level threshold is
            chosen on validation patients aggregated the same way.
        bootstrap_resamples: patient-level bootstrap resamples for the 95% intervals (100..100000).
        bootstrap_seed: seed of the bootstrap (same seed, same intervals), 0..2**32-1.
        subgroups: test figures per group of a manifest column, e.g. [sex, site], or per band
            of a numeric column with cut points, e.g. "age:18,65" (<18, [18, 65), >=65), at the
            same operating point with patient-level intervals (README, "Subgroups").
        explain: Grad-CAM overlays (needs `pip install grad-cam`): with predict, one per image in
            explanations/ next to predictions.csv; after test, the images chosen to teach, for
            report.html (README, "Where the model looks").
        external: `test`: a second site's data folder or manifest, scored whole as external test
            data at this run's operating point, beside the internal test (README, "External validation").
    """

    threshold: str = "youden"
    temperature_scaling: bool = False
    patient_aggregation: Literal["mean", "max"] = "max"
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    subgroups: list[str] = field(default_factory=list)
    explain: bool = False
    external: Optional[str] = None

    def __post_init__(self) -> None:
        from evaluation import parse_subgroups, parse_threshold

        if self.explain and importlib.util.find_spec("pytorch_grad_cam") is None:  # before any training
            raise ValueError("eval.explain needs the grad-cam package: pip install grad-cam")

        parse_threshold(self.threshold)  # a bad spec fails at parse time, naming eval.threshold
        parse_subgroups(self.subgroups)  # likewise eval.subgroups; its columns are checked on the data
        if self.external is not None and not os.path.exists(os.path.expanduser(self.external)):
            raise ValueError(f"eval.external={self.external} does not exist: give a data folder or a manifest")
        if not MIN_RESAMPLES <= self.bootstrap_resamples <= MAX_RESAMPLES:
            raise ValueError(f"eval.bootstrap_resamples must be in {MIN_RESAMPLES}..{MAX_RESAMPLES}, got "
                             f"{self.bootstrap_resamples}: fewer make the 95% interval's ends noisy; more change "
                             "them by less than their own Monte Carlo error while the time grows linearly "
                             "(10^6 already takes seconds on two dozen images, minutes on thousands)")
        if isinstance(self.bootstrap_seed, bool) or not 0 <= self.bootstrap_seed <= MAX_SEED:
            raise ValueError(f"eval.bootstrap_seed must be an integer in 0..{MAX_SEED} (numpy's seed range), "
                             f"got {self.bootstrap_seed}")


@dataclass
class CVOptions:
    """Cross-validated trials: one run trains k patient-level folds.

    Args:
        folds: train this many folds over the images not in the test split as ONE run (one
            W&B run, one sweep trial; the sweep metric is the folds' mean, the operating point
            is chosen out of fold, test is scored by the fold ensemble: README "Cross-validated
            trials"). 0: no cross-validation.
        folds_per_device: how many folds train side by side on each device (trainer.devices; as
            the runner's --trials-per-gpu does for trials), the rest one after the other. Each
            fold needs its own memory: lower it when they do not fit. At most 64.
        run_dir: with `predict`: the directory of a cross-validated run whose fold ensemble
            (mean of the folds' probabilities, the run's operating point) makes the predictions.
    """

    folds: int = 0
    folds_per_device: int = 1
    run_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"cv.folds must be 0 (off) or at least 2, got {self.folds}")
        if self.folds_per_device < 1:
            raise ValueError(f"cv.folds_per_device must be at least 1, got {self.folds_per_device}")
        if self.folds_per_device > MAX_RUNS_PER_DEVICE:
            raise ValueError(f"cv.folds_per_device must be at most {MAX_RUNS_PER_DEVICE}, got {self.folds_per_device}: "
                             "each fold on a device is a process with its own memory there (on a GPU a CUDA context "
                             "alone takes ~0.5 GB); more than cv.folds runs no more folds at once")


# Options that were renamed: the old spelling fails with the new name instead of "unrecognized".
RENAMED = {"--explain": "--eval.explain=true"}


def check_renamed(args: list[str]) -> None:
    for arg in args:
        old = arg.split("=", 1)[0]
        if old in RENAMED:
            raise ValueError(f"{old} is now {RENAMED[old]} (an eval option, so configs and sweeps can set it)")
