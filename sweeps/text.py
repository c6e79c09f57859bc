"""Text from a sweep or its runs is data. On a terminal a categorical value "\\x1b[2J\\x1b]0;pwned\\x07"
must show as those characters, not clear the screen and retitle the window (`visible`). In a
failure reason, on a terminal or in report.html, no file name may show (`mask_file_names`,
README "Privacy"): image files are often named after the patient ("Doe Jane 1970-01-01
MRN778899.png"), and such names hold spaces. A quoted text that looks like a file (a path
separator inside, or a file suffix at the end) is masked whole, as cli.py and Python quote paths.
Unquoted, where spaces make the end a guess: from a path start through a file suffix in the same
clause, then path tokens and file names."""

from __future__ import annotations

import re

_SUFFIX = (r"\.(?:png|jpe?g|dcm|dicom|tiff?|bmp|gif|webp|nii|nrrd|gz|zip|csv|tsv|txt|log|npy|npz|pt|pth|ckpt"
           r"|safetensors|ya?ml|json)\b")
_ABSOLUTE = r"(?:[A-Za-z]:[\\/]|~/|\.{1,2}/|/)"
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*"')
_FILE_LIKE = re.compile(rf"[/\\]|{_SUFFIX}\s*$", re.IGNORECASE)
_UNQUOTED = re.compile(
    rf"(?<![\w.~-])(?:{_ABSOLUTE}|[\w.~-]+[/\\])(?:(?![:;,]\s|\s+{_ABSOLUTE})[^\n'\"])*?{_SUFFIX}"
    rf"|(?<![\w.~-]){_ABSOLUTE}[^\s'\",;)]*"  # /data/x, ./x, ~/x, C:\x
    r"|[\w.~-]+(?:[/\\][\w.~-]+){2,}"  # data/ra_hand/x (a metric name such as val/auroc stays)
    rf"|[^\s'\"/\\:;,()\[\]]+{_SUFFIX}",  # DOE^JANE_MRN778899.png
    re.IGNORECASE)
MASK = "<path>"


def visible(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with every character Python does not call printable written as its escape: C0 and
    C1 controls (ESC, BEL, CR, backspace, DEL, CSI), line and paragraph separators, bidi
    overrides and other format characters (\\u202e), lone surrogates. `keep_newlines` keeps "\\n"
    for messages of several lines."""
    return "".join(ch if ch.isprintable() or (keep_newlines and ch == "\n")
                   else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in str(text))


def mask_file_names(text: object) -> str:
    """`text` with every file name or path replaced by <path>; metric names such as val/auroc stay."""
    text = _QUOTED.sub(lambda m: MASK if _FILE_LIKE.search(m.group()[1:-1]) else m.group(), str(text))
    return _UNQUOTED.sub(MASK, text)
