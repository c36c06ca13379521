"""Reading a UTF-8 input file whole, with the one-line errors the data readers give.

A missing file and bytes that are not UTF-8 stop with an error of the reader's own class that
names the file (and for bad bytes the line and byte offset), so the scripts report it as bad input.
"""
from __future__ import annotations

import os


def read_utf8(path, error=ValueError, what: str = "file") -> str:
    """The text of `path`; `error(message)` (e.g. the reader's ValueError subclass) for a missing
    file ("{path}: {what} not found") or one that is not UTF-8 ("{path}:{line}: not UTF-8 ...")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{path}: {what} not found")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 (byte {exc.start}: {exc.reason})") from None
