"""Text from a sweep or its runs on a terminal is data: a categorical value "\\x1b[2J\\x1b]0;pwned\\x07"
must show as those characters, not clear the screen and retitle the window."""

from __future__ import annotations


def visible(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with every character Python does not call printable written as its escape: C0 and
    C1 controls (ESC, BEL, CR, backspace, DEL, CSI), line and paragraph separators, bidi
    overrides and other format characters (\\u202e), lone surrogates. `keep_newlines` keeps "\\n"
    for messages of several lines."""
    return "".join(ch if ch.isprintable() or (keep_newlines and ch == "\n")
                   else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in str(text))
