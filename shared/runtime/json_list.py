"""Reading a JSON file that holds a non-empty list (the instruction and preference data files),
with the one-line errors the data readers give.

The text comes through `utf8_file.read_utf8` (a missing file, bytes that are not UTF-8); bad JSON
names the file, line and column; anything but a non-empty list is refused. Every error is the
caller's own ValueError subclass, so the scripts report it as bad input naming the file.
"""
from __future__ import annotations

import json
import os

from shared.runtime.utf8_file import read_utf8


def read_json_list(path, error=ValueError, what: str = "entries") -> list:
    """The list `path` holds; `error(message)` when it is missing, not UTF-8, not JSON, not a
    list, or empty ("{path}: the list holds no {what}")."""
    path = os.fspath(path)
    text = read_utf8(path, error, what="JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise error(f"{path}: expected a JSON list of {what}, got a {type(data).__name__}")
    if not data:
        raise error(f"{path}: the list holds no {what}")
    return data
