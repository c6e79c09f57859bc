"""The report's "Where the model looks" section: the best run's Grad-CAM overlays of test images
chosen to teach (explanations/test_overlays.json, written by the run: models/teaching.py), as
inline JPEG thumbnails with probability and true/predicted class. Nothing is recomputed here.

What the page takes from the file is checked, as it may be damaged or not ours: the kinds
are the three known ones, the classes must be the test report's class names, the pixels must
be a JPEG of bounded size; anything else is left out with one line saying so. No file name
is in the file, and none can reach the page through it.
"""

from __future__ import annotations

import base64
import binascii
import html
from typing import Optional

from rundir.layout import TEST_OVERLAYS

KINDS = ("true_positive", "false_positive", "false_negative")
MAX_PER_KIND = 8
MAX_JPEG_BYTES = 64_000  # a thumbnail is ~10 kB: a bigger one is not one of ours
STYLE = """
figure.overlay { display: inline-block; margin: 0 0.8em 0.8em 0; vertical-align: top; }
figure.overlay img { display: block; max-width: 192px; border: 1px solid #ddd; }
figure.overlay figcaption { font-size: 0.85em; color: #444; max-width: 192px; }
"""


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
        return ('<p class="note">No overlays: the best run was not run with eval.explain=true (or had no test '
                'split, or is not a binary task).</p>')
    images, names = data.get("images"), [str(n) for n in class_names or []]
    positive = names[1] if len(names) == 2 else None
    if not isinstance(images, list) or positive is None:
        return f'<p class="note">The overlays are not shown: its {TEST_OVERLAYS} is damaged.</p>'
    shown: dict[str, list[str]] = {kind: [] for kind in KINDS}
    left_out = 0
    for entry in images:
        ok = isinstance(entry, dict) and entry.get("kind") in KINDS and entry.get("true") in names \
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
    titles = {"true_positive": "Most confident true positives", "false_positive": "Worst false positives",
              "false_negative": "Worst false negatives"}
    for kind in KINDS:
        parts.append(f"<h3>{titles[kind]}</h3>")
        parts.append("".join(shown[kind]) or '<p class="note">None in the test split.</p>')
    if left_out:
        parts.append(f'<p class="note">{left_out} entr{"y" if left_out == 1 else "ies"} of {TEST_OVERLAYS} '
                     "left out (damaged, or not a thumbnail of this run).</p>")
    return "\n".join(parts)
