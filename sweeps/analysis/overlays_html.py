"""The report's "Where the model looks" section: the thumbnails the best run wrote
(models/teaching.py), nothing recomputed. The file may be damaged or not ours, so only known
kinds, the test report's class names and bounded JPEGs reach the page; the rest is counted."""

from __future__ import annotations

import base64
import binascii
import html
from typing import Optional

from rundir.layout import TEST_OVERLAYS
from sweeps.analysis.html_parts import _note

KINDS = {"true_positive": "Most confident true positives", "false_positive": "Worst false positives",
         "false_negative": "Worst false negatives"}  # kind -> its heading, in page order
MAX_PER_KIND = 8
MAX_JPEG_BYTES = 64_000  # a thumbnail is ~10 kB: a bigger one is not one of ours


def _jpeg(text) -> Optional[str]:
    """The base64 text when it decodes to a JPEG of bounded size, else None."""
    try:
        raw = base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError):
        return None
    return str(text) if raw.startswith(b"\xff\xd8") and len(raw) <= MAX_JPEG_BYTES else None


def _figure(entry: dict, positive: str, jpeg: str) -> str:
    kind = entry["kind"].replace("_", " ")
    return (f'<figure class="overlay"><img alt="{kind}" src="data:image/jpeg;base64,{jpeg}">'
            f"<figcaption>P({html.escape(positive)}) = {float(entry['probability']):.3f}<br>"
            f"true {html.escape(entry['true'])}, predicted {html.escape(entry['predicted'])}</figcaption></figure>")


def overlays_html(data: Optional[dict], class_names: list) -> str:
    """The section's HTML, or a note saying why there is none."""
    if data is None:
        return _note("No overlays: the best run was not run with eval.explain=true (or had no test split, "
                     "or is not a binary task).")
    images, names = data.get("images"), [str(n) for n in class_names or []]
    positive = names[1] if len(names) == 2 else None
    if not isinstance(images, list) or positive is None:
        return _note(f"The overlays are not shown: its {TEST_OVERLAYS} is damaged.")
    shown: dict[str, list[str]] = {kind: [] for kind in KINDS}
    left_out = 0
    for entry in images:  # list(KINDS): compared by equality, as a damaged kind may be unhashable
        ok = isinstance(entry, dict) and entry.get("kind") in list(KINDS) and entry.get("true") in names \
            and entry.get("predicted") in names and isinstance(entry.get("probability"), (int, float))
        jpeg = _jpeg(entry.get("jpeg")) if ok else None
        if jpeg is None or len(shown[entry["kind"]]) >= MAX_PER_KIND:
            left_out += 1
            continue
        shown[entry["kind"]].append(_figure(entry, positive, jpeg))
    folds = data.get("ensemble_folds")
    whose = (f"the mean of the {folds} folds' maps (each fold's model at its own layer)"
             if isinstance(folds, int) and folds > 1 else "the tested model's map")
    parts = [f"<p>Grad-CAM of the class decided at the operating point ({whose}); red: what drove the "
             "decision. Test images only, chosen by the model's own probabilities; names are never shown.</p>"]
    for kind, title in KINDS.items():
        parts.append(f"<h3>{title}</h3>")
        parts.append("".join(shown[kind]) or _note("None in the test split."))
    if left_out:
        parts.append(_note(f'{left_out} entr{"y" if left_out == 1 else "ies"} of {TEST_OVERLAYS} left out '
                           "(damaged, or not a thumbnail of this run)."))
    return "\n".join(parts)
