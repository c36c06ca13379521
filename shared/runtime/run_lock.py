"""One process at a time writes a run folder: a lock file holding who claimed it.

`RunLock(folder)` takes an exclusive `flock` on FOLDER/run.lock and writes the owner's pid, host,
start time and command into it. The kernel drops a flock when its holder dies, even by SIGKILL,
so a claim can never outlive its process; the written record is only there to name the owner.
  - folder locked by a live process: `RunFolderBusy`, naming the process and the folder;
  - a lock file whose flock is free (its process died without cleaning up): taken over, with a
    note naming the dead claim;
  - a lock in an enclosing folder (a pipeline's run folder around a training's work_dir) also
    refuses, unless this process descends from its holder: a holder lists its lock file in the
    environment variable JLA_RUN_LOCKS, which the stages it starts inherit.
A released lock file is removed (unlinked while still locked; a process that opened the old file
meanwhile notices the swap and tries again), so a lock file found later marks a dead claim.
`flock` is advisory and local (Linux/macOS; on network file systems only where they support it).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys

LOCK_NAME = "run.lock"
HELD_ENV = "JLA_RUN_LOCKS"


class RunFolderBusy(RuntimeError):
    """Another live process owns the folder; the message names it."""


def _held_by_ancestors():
    return [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]


def _read_record(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        raw += chunk
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record):
    if not record:
        return "a process that has not written its record yet"
    return (f"pid {record.get('pid')} on {record.get('host')} (started {record.get('started')}): "
            f"{record.get('command')}")


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError, OverflowError):
        return True  # exists under another user, or unreadable: do not claim it is gone
    return True


def _busy(folder, lock_path, record):
    pid = (record or {}).get("pid")
    stop = f"stop it (`kill {pid}` saves and stops it) or " if pid else ""
    return RunFolderBusy(f"{folder} is in use by {_describe(record)} (lock {lock_path}); "
                         f"{stop}wait for it to finish, then rerun, or choose another folder")


def _try_flock(path, flags):
    """Open `path` and flock it without blocking: (fd, None) when locked, (None, record) when
    another process holds it, (None, None) when there is no such file."""
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        return None, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            raise
        record = _read_record(fd)
        os.close(fd)
        return None, record or {}
    return fd, None


class RunLock:
    """Context manager (or acquire()/release()) owning `folder` for this process."""

    def __init__(self, folder, command: str | None = None):
        self.folder = os.path.realpath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.command = command or shlex.join(getattr(sys, "orig_argv", None) or sys.argv)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def _check_enclosing(self):
        held = set(_held_by_ancestors())
        parent = os.path.dirname(self.folder)
        while True:
            lock_path = os.path.join(parent, LOCK_NAME)
            if lock_path not in held and os.path.isfile(lock_path):
                fd, record = _try_flock(lock_path, os.O_RDONLY)
                if fd is not None:
                    os.close(fd)  # a dead claim; its own folder's next owner takes it over
                elif record is not None:
                    raise _busy(parent, lock_path, record)
            up = os.path.dirname(parent)
            if up == parent:
                return
            parent = up

    def acquire(self):
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        os.makedirs(self.folder, exist_ok=True)
        self._check_enclosing()
        while True:
            fd, record = _try_flock(self.path, os.O_RDWR | os.O_CREAT)
            if fd is None:
                raise _busy(self.folder, self.path, record)
            try:  # the file we locked may have been released (unlinked) since we opened it
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_record(fd)
        if previous:
            gone = ("no longer runs" if previous.get("host") != socket.gethostname()
                    or not _pid_alive(previous.get("pid")) else "no longer holds it")
            print(f"note: taking over {self.folder}: it was claimed by {_describe(previous)}, "
                  f"which {gone}", file=sys.stderr, flush=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": self.command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        self._fd = fd
        os.environ[HELD_ENV] = os.pathsep.join(_held_by_ancestors() + [self.path])
        return self

    def release(self):
        if self._fd is None:
            return
        os.environ[HELD_ENV] = os.pathsep.join(p for p in _held_by_ancestors() if p != self.path)
        if not os.environ[HELD_ENV]:
            del os.environ[HELD_ENV]
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None
