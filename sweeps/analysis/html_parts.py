"""Building blocks of the report's HTML (sweeps/analysis/report.py): the page style, tables,
notes, the figure renderer that inlines plotly.js once."""

from __future__ import annotations

import html
import re
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #666; font-style: italic; } section { margin-bottom: 2.5em; }
.stopped { color: #b26b00; } .failed { color: #b00020; }
figure.overlay { display: inline-block; margin: 0 0.8em 0.8em 0; vertical-align: top; }
figure.overlay img { display: block; max-width: 192px; border: 1px solid #ddd; }
figure.overlay figcaption { font-size: 0.85em; color: #444; max-width: 192px; }
"""


class _Figures:
    """Renders figures in page order; only the first carries plotly.js (inline, no CDN)."""

    js_included = False

    def __call__(self, fig) -> str:
        fig.update_layout(template="plotly_white", margin={"l": 60, "r": 30, "t": 50, "b": 50})
        out = fig.to_html(full_html=False, include_plotlyjs=not self.js_included,
                          config={"displaylogo": False, "responsive": True})
        self.js_included = True
        return out


def _table(rows: list[list[Any]], header: bool = True) -> str:
    def cell(tag: str, value: Any) -> str:
        numeric = isinstance(value, (int, float)) or re.fullmatch(r"[-+.\deE]+", str(value) or "x")
        return f"<{tag}{' class=num' if numeric and tag == 'td' else ''}>{html.escape(str(value))}</{tag}>"

    out = ["<table>"]
    for i, row in enumerate(rows):
        tag = "th" if header and i == 0 else "td"
        out.append("<tr>" + "".join(cell(tag, v) for v in row) + "</tr>")
    return "\n".join(out + ["</table>"])


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'
