"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint or output.

Everything is written to a temporary file in the destination folder, flushed to disk and then
renamed over the destination, which POSIX guarantees to be atomic.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is renamed to `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        # again: a writer may have replaced the file (safetensors writes a new 0600 one)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="w", encoding="utf-8"):
    """Like `open(path, mode)` for writing, but the file appears only once it is complete."""
    if "r" in mode or "a" in mode:
        raise ValueError("atomic_open is for writing a whole file ('w' or 'wb')")
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_json(path, obj, indent=2):
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent, sort_keys=False)
        f.write("\n")


def write_text(path, text):
    with atomic_open(path) as f:
        f.write(text)
