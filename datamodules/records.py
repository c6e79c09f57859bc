"""Where the images are: folder layouts and CSV manifests, and patient-level splits.

A data set is a list of records {path, label, patient_id, split}, read lazily later.
Two layouts are accepted under a data root:

    root/{train,val,test}/{class}/file      (splits given by folders)
    root/{class}/file                        (splits made here)
    root/manifest.csv  path,label[,split][,patient_id]   (paths relative to root)

Missing splits are made with a seed at patient level: no patient in two splits.

Only files inside the data root are read: a manifest row such as `../../x.png` or
`/elsewhere/x.png`, or a symlink (file, class or split folder) that leads out of the root, is
refused unless `allow_outside_root` is set. Their records are then named `outside-root/line-N`
(manifest line N) or `outside-root/N` (the N-th one found in the folders), so skip reports and
predictions.csv show neither their real paths nor even their file names, which hospital
exports often build from patient names and record numbers. (An error that stops the run names
the file as configured, as for any other file.)

Labels are compared as people read them: see `normalize_label`. Patient ids are compared more
loosely still (`normalize_patient_id`): two ids that look alike are one patient, and a warning
names the manifest lines that wrote them differently.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from datamodules.readers import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
OUTSIDE_ROOT = "outside-root"  # prefix of the neutral names of files outside the data root
_OPT_IN = "set data.allow_outside_root=true to read them"


class DataError(ValueError):
    """Bad or missing input data; the message says what to fix."""


@dataclass(frozen=True)
class Record:
    path: Path  # as configured: data root / manifest path
    rel: str  # relative to the data root, or outside-root/...: the only form that may reach a logger
    label: str
    patient_id: str
    split: Optional[str] = None
    # Manifest columns beyond BASE_COLUMNS (sex, age, site, ...), for eval.subgroups only: they
    # can identify a patient, so they are left out of repr and reach no logger.
    columns: tuple[tuple[str, str], ...] = field(default=(), repr=False)


BASE_COLUMNS = ("path", "label", "split", "patient_id")


def _listing(errors: list[str], limit: int = 5) -> str:
    shown = "\n  ".join(errors[:limit])
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"\n  {shown}{more}"


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def normalize_label(raw: str) -> str:
    """A label as people read it: format characters (category Cf: zero-width space, BOM, soft
    hyphen, ...) removed, Unicode NFC (macOS writes folder names decomposed, NFD), whitespace
    runs (NBSP included) made one space, and none around it.

    These variants show the same text, so they are merged silently. Labels that differ only in
    letter case are not: `check_labels` warns about them and keeps them apart.
    """
    text = "".join(ch for ch in raw if unicodedata.category(ch) != "Cf")
    return " ".join(unicodedata.normalize("NFC", text).split())


def normalize_patient_id(raw: str) -> str:
    """A patient id as `normalize_label` reads a label, but with Unicode NFKC instead of NFC, so
    that compatibility forms (full-width "Ｐ０００２", ligatures, superscripts) also read as the
    plain characters. Merging ids wrongly only keeps two patients together (a stricter split, a
    wider interval); keeping look-alikes apart leaks a patient across splits."""
    text = "".join(ch for ch in raw if unicodedata.category(ch) != "Cf")
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _warn_look_alike_ids(manifest: Path, written: dict[str, dict[str, int]]) -> None:
    """One warning naming the lines (never the ids: often medical record numbers) where an id
    was written differently from its look-alike."""
    variants = [sorted(lines.values()) for lines in written.values() if len(lines) > 1]
    if variants:
        shown = [f"lines {', '.join(map(str, lines))}" for lines in variants]
        log.warning("Manifest %s: %d patient id(s) are written in several ways that differ only in invisible "
                    "characters, Unicode form or spacing; each is read as one patient (first line of each "
                    "spelling):%s", manifest, len(variants), _listing(shown))


def _real_root(root: Path) -> Path:
    return Path(os.path.realpath(root))


def _inside(path: Path, real_root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(real_root)


def _first_outside(root: Path, real_root: Path, rel: str) -> str:
    """The shortest leading part of `rel` that leads out of the root: the symlinked split or
    class folder (with a trailing /) rather than every file under it."""
    parts = rel.split("/")
    for n in range(1, len(parts)):
        if not _inside(root.joinpath(*parts[:n]), real_root):
            return "/".join(parts[:n]) + "/"
    return rel


def scan_folder(root: Path, *, allow_outside_root: bool = False) -> list[Record]:
    """Records from root/{split}/{class}/file or root/{class}/file."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    real_root = _real_root(root)
    records, empty, outside, n_outside = [], [], {}, 0
    for base, split in [(d, d.name) for d in split_dirs] or [(root, None)]:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = normalize_label(class_dir.name)
            if not label:
                empty.append(repr(class_dir.relative_to(root).as_posix()))
                continue
            for path in sorted(class_dir.rglob("*")):
                if _is_image(path):
                    rel = path.relative_to(root).as_posix()
                    if not _inside(path, real_root):
                        outside[_first_outside(root, real_root, rel)] = None
                        n_outside += 1
                        rel = f"{OUTSIDE_ROOT}/{n_outside}"
                        if not allow_outside_root:
                            continue
                    records.append(Record(path, rel, label, rel, split))
    if empty:
        raise DataError(f"{root}: class folder name(s) with no visible characters:{_listing(empty)}")
    if outside and not allow_outside_root:
        raise DataError(
            f"{root}: {n_outside} image(s) lead outside the data root through symlinks:"
            f"{_listing(list(outside))}\nFiles outside the data root are not read; {_OPT_IN}."
        )
    return records


def read_manifest(manifest: Path, root: Path, *, allow_outside_root: bool = False) -> list[Record]:
    """Records from a CSV manifest; paths are relative to `root` (or absolute)."""
    try:
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            columns = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = columns
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Cannot read manifest {manifest}: {e}") from e
    missing_cols = [c for c in ("path", "label") if c not in columns]
    if missing_cols:
        raise DataError(
            f"Manifest {manifest} lacks column(s) {missing_cols}; found {columns}. "
            "Expected a header `path,label[,split][,patient_id]`."
        )
    if not rows:
        raise DataError(f"Manifest {manifest} has a header but no rows")
    real_root = _real_root(root)
    records, missing, bad, outside = [], [], [], []
    written: dict[str, dict[str, int]] = defaultdict(dict)  # normalised id -> {as written: first line}
    for line, row in enumerate(rows, start=2):
        rel, label = (row.get("path") or "").strip(), normalize_label(row.get("label") or "")
        split = (row.get("split") or "").strip() or None
        if not rel or not label:
            bad.append(f"line {line}: empty path or label")
            continue
        if split is not None and split not in SPLITS:
            bad.append(f"line {line}: split {split!r} is not one of {list(SPLITS)}")
            continue
        given = rel
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        # Checked first, so that a refused file is never opened.
        if not _inside(path, real_root):
            outside.append(f"line {line}: {given}")
            if not allow_outside_root:
                continue
            rel = f"{OUTSIDE_ROOT}/line-{line}"
        elif Path(rel).is_absolute() or ".." in Path(rel).parts:
            rel = Path(os.path.realpath(path)).relative_to(real_root).as_posix()
        if not path.is_file():
            missing.append(f"line {line}: {given}")
            continue
        raw_id = row.get("patient_id") or ""
        patient = normalize_patient_id(raw_id)
        if patient:
            written[patient].setdefault(raw_id.strip(), line)
        extra = tuple((c, (row.get(c) or "").strip()) for c in columns if c and c not in BASE_COLUMNS)
        records.append(Record(path, rel, label, patient or rel, split, extra))
    if bad:
        raise DataError(f"Manifest {manifest} has {len(bad)} invalid row(s):{_listing(bad)}")
    if outside and not allow_outside_root:
        raise DataError(
            f"Manifest {manifest}: {len(outside)} row(s) point outside the data root {root}:"
            f"{_listing(outside)}\nFiles outside the data root are not read; {_OPT_IN}."
        )
    if missing:
        raise DataError(
            f"Manifest {manifest}: {len(missing)} of {len(rows)} file(s) do not exist "
            f"(paths are relative to data.root {root}):{_listing(missing)}"
        )
    _warn_look_alike_ids(manifest, written)
    return records


NEGATIVE_NAMES = ("normal", "negative", "healthy", "control", "no", "0")


def check_labels(records: list[Record], classes: Optional[list[str]], source: str) -> list[str]:
    """Class names in label order: `classes` if given (every label must be in it), else sorted,
    except that for two classes a "normal"-like name comes first, so the abnormal class is the
    positive class of sensitivity, specificity and F1.

    Labels that differ only in letter case ("Normal", "normal") stay separate classes, since the
    data says so, but a warning names them: almost always one class written two ways."""
    found = sorted({r.label for r in records})
    by_case: dict[str, list[str]] = defaultdict(list)
    for label in found:
        by_case[label.casefold()].append(label)
    for variants in (v for v in by_case.values() if len(v) > 1):
        log.warning("%s: labels %s differ only in letter case and are kept as separate classes; "
                    "if they are one class, write them the same way in the data",
                    source, " and ".join(map(repr, variants)))
    if classes is None:
        if len(found) < 2:
            raise DataError(f"{source}: found {len(found)} class(es) {found}; a classifier needs at least 2")
        if len(found) == 2 and found[1].lower() in NEGATIVE_NAMES and found[0].lower() not in NEGATIVE_NAMES:
            found.reverse()
        return found
    classes = [normalize_label(c) for c in classes]
    if "" in classes or len(set(classes)) < len(classes):
        raise DataError(f"data.classes {classes} has an empty or repeated name (after normalize_label)")
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{source}: unknown label(s) {unknown}; data.classes allows {list(classes)}")
    return list(classes)


def assign_splits(records: list[Record], *, val_fraction: float, test_fraction: float, seed: int) -> list[Record]:
    """Give every record without a split one, at patient level and stratified by label.

    Patients that already have a split keep it (all their images follow it); a patient whose
    images were given different splits is an error, since it would leak between splits.
    """
    given: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.split:
            given[r.patient_id].add(r.split)
    # Name the images, not the patient IDs: those are often medical record numbers.
    first_image = {}
    for r in records:
        first_image.setdefault(r.patient_id, r.rel)
    leaking = [f"the patient of {first_image[p]}: {sorted(s)}" for p, s in given.items() if len(s) > 1]
    if leaking:
        raise DataError(f"{len(leaking)} patient(s) appear in more than one split:{_listing(leaking)}")
    todo: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if not r.split and r.patient_id not in given:
            todo[r.patient_id].append(r)
    if not todo:
        return [replace(r, split=r.split or next(iter(given[r.patient_id]))) for r in records]
    # Stratify patients by their most common label so small val/test sets still hold every class.
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, recs in sorted(todo.items()):
        by_label[Counter(r.label for r in recs).most_common(1)[0][0]].append(patient)
    rng = random.Random(seed)
    split_of: dict[str, str] = {}
    for label in sorted(by_label):
        patients = by_label[label]
        rng.shuffle(patients)
        n_test = round(len(patients) * test_fraction)
        n_val = round(len(patients) * val_fraction)
        for i, patient in enumerate(patients):
            split_of[patient] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [
        replace(r, split=r.split or (next(iter(given[r.patient_id])) if r.patient_id in given else split_of[r.patient_id]))
        for r in records
    ]


def assign_folds(records: list[Record], *, folds: int, seed: int) -> dict[str, int]:
    """Patient -> fold (0..folds-1) for k-fold cross-validation over `records` (the images not
    in the test split): whole patients, stratified by each patient's most common label, the
    same for the same seed. Patients of each label are shuffled and dealt round-robin, the
    deal continuing across labels so that fold sizes differ by at most one patient."""
    if folds < 2:
        raise DataError(f"data.folds must be at least 2 for cross-validation, got {folds}")
    labels_of: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        labels_of[r.patient_id][r.label] += 1
    by_label: dict[str, list[str]] = defaultdict(list)
    for patient, counts in sorted(labels_of.items()):
        by_label[counts.most_common(1)[0][0]].append(patient)
    smallest = min(by_label.items(), key=lambda kv: len(kv[1])) if by_label else ("", [])
    if len(smallest[1]) < folds:
        raise DataError(f"data.folds={folds} is more than the {len(smallest[1])} patient(s) of class "
                        f"{smallest[0]!r} outside the test split: every fold needs one of each class. "
                        "Use fewer folds.")
    rng = random.Random(seed)
    fold_of, position = {}, 0
    for label in sorted(by_label):
        patients = by_label[label]
        rng.shuffle(patients)
        for patient in patients:
            fold_of[patient] = position % folds
            position += 1
    return fold_of
