"""Where the images are: records {path, label, patient_id, split} from a folder layout or a CSV
manifest (README, Your data), read lazily later. Files outside the data root are refused, or with
`allow_outside_root` named `outside-root/...`, never by their path or file name, which hospital
exports often build from patient names (README, Privacy)."""

from __future__ import annotations

import csv
import logging
import os
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from datamodules.readers import FORMATS

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


def listing(errors: list[str], limit: int = 5) -> str:
    """Up to `limit` problems, one per line, and how many more."""
    shown = "\n  ".join(errors[:limit])
    more = f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else ""
    return f"\n  {shown}{more}"


def normalize_label(raw: str, form: str = "NFC") -> str:
    """A label as people read it: format characters (category Cf: zero-width space, BOM, soft
    hyphen, ...) removed, Unicode NFC (macOS writes folder names decomposed, NFD), whitespace
    runs (NBSP included) made one space, and none around it. Letter case is kept (check_labels)."""
    text = "".join(ch for ch in raw if unicodedata.category(ch) != "Cf")
    return " ".join(unicodedata.normalize(form, text).split())


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
    real_root = Path(os.path.realpath(root))
    records, empty, outside, n_outside = [], [], {}, 0
    for base, split in [(root / s, s) for s in SPLITS if (root / s).is_dir()] or [(root, None)]:
        for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = normalize_label(class_dir.name)
            if not label:
                empty.append(repr(class_dir.relative_to(root).as_posix()))
                continue
            for path in sorted(class_dir.rglob("*")):
                if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in FORMATS:
                    rel = path.relative_to(root).as_posix()
                    if not _inside(path, real_root):
                        outside[_first_outside(root, real_root, rel)] = None
                        n_outside += 1
                        rel = f"{OUTSIDE_ROOT}/{n_outside}"
                        if not allow_outside_root:
                            continue
                    records.append(Record(path, rel, label, rel, split))
    if empty:
        raise DataError(f"{root}: class folder name(s) with no visible characters:{listing(empty)}")
    if outside and not allow_outside_root:
        raise DataError(
            f"{root}: {n_outside} image(s) lead outside the data root through symlinks:"
            f"{listing(list(outside))}\nFiles outside the data root are not read; {_OPT_IN}."
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
    real_root = Path(os.path.realpath(root))
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
        # NFKC, not NFC: full-width ids, ligatures and superscripts read as plain characters too.
        # Merging ids wrongly only keeps two patients together; keeping look-alikes apart leaks one.
        patient = normalize_label(raw_id, "NFKC")
        if patient:
            written[patient].setdefault(raw_id.strip(), line)
        extra = tuple((c, (row.get(c) or "").strip()) for c in columns if c and c not in BASE_COLUMNS)
        records.append(Record(path, rel, label, patient or rel, split, extra))
    if bad:
        raise DataError(f"Manifest {manifest} has {len(bad)} invalid row(s):{listing(bad)}")
    if outside and not allow_outside_root:
        raise DataError(
            f"Manifest {manifest}: {len(outside)} row(s) point outside the data root {root}:"
            f"{listing(outside)}\nFiles outside the data root are not read; {_OPT_IN}."
        )
    if missing:
        raise DataError(
            f"Manifest {manifest}: {len(missing)} of {len(rows)} file(s) do not exist "
            f"(paths are relative to data.root {root}):{listing(missing)}"
        )
    # One warning naming the lines, never the ids (often medical record numbers).
    variants = [f"lines {', '.join(map(str, sorted(v.values())))}" for v in written.values() if len(v) > 1]
    if variants:
        log.warning("Manifest %s: %d patient id(s) are written in several ways that differ only in invisible "
                    "characters, Unicode form or spacing; each is read as one patient (first line of each "
                    "spelling):%s", manifest, len(variants), listing(variants))
    return records
