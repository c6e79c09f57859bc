"""Why a run failed, in words that name no file (README, "Privacy"): image files are often named
after the patient ("Doe Jane 1970-01-01 MRN778899.png"), and such names hold spaces. A quoted text
that looks like a file (a path separator inside, or a file suffix at the end) is masked whole, as
cli.py and Python quote paths. Unquoted, where spaces make the end a guess: from a path start
through a file suffix in the same clause, then path tokens and file names.
"""

from __future__ import annotations

import re
from pathlib import Path

from rundir.records import failure_reason as reason_in_log

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


def failure_reason(log: Path, code: int) -> str:
    """Why a run failed (from its output.log and exit status), every file name or path replaced by
    <path>; metric names such as val/auroc stay."""
    text = reason_in_log(log, code)
    text = _QUOTED.sub(lambda m: MASK if _FILE_LIKE.search(m.group()[1:-1]) else m.group(), text)
    return _UNQUOTED.sub(MASK, text)
