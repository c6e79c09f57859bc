"""Read an offline W&B run file (run-*.wandb) without network: wandb 0.31 keeps no Python
reader, so this decodes its LevelDB-style log of wandb_internal_pb2.Record protos."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class Incomplete(Exception):
    """The file ends inside a record: W&B's writer is still appending to it."""


def _decode(data: bytes) -> list:
    pos, buf, pending, out = 7, b"", False, []
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length:
            raise Incomplete
        pos += 7 + length
        buf = chunk if kind in (_FULL, _FIRST) else buf + chunk
        pending = kind in (_FIRST, _MIDDLE)
        if pending:
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        out.append(record)
    if pending or any(data[pos:]):  # a record or a header cut short
        raise Incomplete
    return out


def records(path: Path, wait_s: float = 10.0) -> list:
    """The records of a run file. W&B's service process writes the file and may still be
    appending to it for a moment after `run.finish()` returned to an in-process caller (seen
    once in a loaded test run: the last record cut short). So the file is read again until it
    is whole and holds the run's exit record, for at most `wait_s` seconds; after that a whole
    file without one is returned as it is (a run that never finished)."""
    deadline = time.monotonic() + wait_s
    while True:
        data = Path(path).read_bytes()
        assert data[:4] == b":W&B", f"{path} is not a W&B run file"
        try:
            found = _decode(data)
        except Incomplete:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} still ends inside a record after {wait_s:.0f} s") from None
        else:
            if time.monotonic() > deadline or any(r.WhichOneof("record_type") == "exit" for r in found):
                return found
        time.sleep(0.1)


def history(path: Path) -> list[dict]:
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = ".".join(item.nested_key) if item.nested_key else item.key
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def exit_code(path: Path):
    codes = [r.exit.exit_code for r in records(path) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def run_file(run_dir: Path) -> Path:
    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run in {run_dir}, found {files}"
    return files[0]


def all_text(run_dir: Path) -> str:
    """Every string W&B recorded for the run (history, config, summary, files' names)."""
    parts = []
    for record in records(run_file(run_dir)):
        parts.append(str(record))
    return "\n".join(parts)
