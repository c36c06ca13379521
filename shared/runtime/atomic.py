"""Atomic file writes: a reader (or a crash) never sees a half-written checkpoint or output.

Everything is written to a temporary file in the destination folder, flushed to disk and then
renamed over the destination, which POSIX guarantees to be atomic. Inside `atomic_group()` the
renames wait for the end of the group: its files appear together, or (on any failure) none of
them. A writer's failure to write (a full disk, an I/O error) is an OSError naming the
destination, whatever the writer raised (safetensors and torch.save raise their own errors).
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import re
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


# The open atomic_group's pending renames [(tmp, path)], or None outside a group.
_GROUP = contextvars.ContextVar("atomic_group", default=None)
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust writers (safetensors) report an OSError


def _write_failure(exc: BaseException, path: str):
    """The OSError naming `path` that `exc`, raised while writing it, stands for (None if it is
    no failure to write)."""
    if isinstance(exc, OSError):
        if exc.filename is None or os.path.basename(os.fspath(exc.filename)).endswith(".tmp"):
            return OSError(exc.errno, exc.strerror or str(exc), path)
        return None
    match = _OS_ERROR.search(str(exc))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code), path)
    if "unexpected pos" in str(exc):  # torch.save's zip writer on a short write
        folder = os.path.dirname(os.path.abspath(path))
        if os.statvfs(folder).f_bavail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return OSError(errno.EIO, f"the write stopped short ({exc})", path)
    return None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is renamed to `path` (at the end of
    the enclosing `atomic_group`, if any)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    group = _GROUP.get()
    try:
        try:
            yield tmp
            # again: a writer may have replaced the file (safetensors writes a new 0600 one)
            os.chmod(tmp, 0o666 & ~_UMASK)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except Exception as exc:
            failure = _write_failure(exc, path)
            if failure is None:
                raise
            raise failure from exc
        if group is None:
            os.replace(tmp, path)
        else:
            group.append((tmp, path))
            tmp = None  # the group renames or removes it
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _absent_folders(folder) -> list:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    absent, folder = [], os.path.abspath(os.fspath(folder))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        absent.append(folder)
        folder = os.path.dirname(folder)
    return absent


@contextlib.contextmanager
def atomic_group(*folders):
    """The atomic writes inside appear together at the end, or none of them.

    `folders`: the folders the writes go into; those (and their parents) that do not exist yet
    are removed again, when still empty, if the group fails, so a failed run leaves nothing
    behind. A group inside another one joins it."""
    absent = [f for folder in folders for f in _absent_folders(folder)]
    pending = _GROUP.get()
    outer = pending is None
    if outer:
        pending = []
    start = len(pending)
    token = _GROUP.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending[start:]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        del pending[start:]
        for folder in absent:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    finally:
        _GROUP.reset(token)
    if outer:
        try:
            for tmp, path in pending:
                os.replace(tmp, path)
        finally:
            for tmp, _ in pending:
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
