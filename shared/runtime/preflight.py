"""Checks the scripts run before any work: can the outputs be written.

Each returns readable problem lines (empty when all is well), so a script can report every
problem of its arguments at once and stop before it creates a folder or spends time computing
something it could not save.
"""
from __future__ import annotations

import os


class OutputProblem(ValueError):
    """An output that cannot be written; the message names the flag and the path."""


def check_outputs(problems: list):
    """Raise OutputProblem (one line, every problem) when `problems` is not empty; run_script
    (shared/runtime/entry_point.py) reports it as `error: ...`, status 2, before any work is done."""
    if problems:
        raise OutputProblem("; ".join(problems))


def input_file_problems(flag: str, path: str) -> list:
    """Problems that stop `path` from being read as a file (it must exist and not be a folder)."""
    if os.path.isdir(path):
        return [f"{flag} {path}: is a folder, not a file"]
    if not os.path.exists(path):
        return [f"{flag} {path}: file not found"]
    if not os.access(path, os.R_OK):
        return [f"{flag} {path}: not readable"]
    return []


def _folder_problem(folder: str):
    """Why `folder` cannot be (made and) written as a folder, or None."""
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        return "is a file, not a folder" if probe == folder else f"lies under the file {probe}"
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"{probe} is on a read-only file system"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def output_dir_problems(flag: str, path: str) -> list:
    """Problems that stop `path` from being (made and) written as a folder.

    The folder need not exist; its nearest existing ancestor must be a writable folder on a
    writable file system. (os.access alone passes for root on a read-only mount, hence statvfs.)
    """
    path = os.path.abspath(os.fspath(path))
    problem = _folder_problem(path)
    return [f"{flag} {path}: {problem}"] if problem else []


def output_file_problems(flag: str, path: str) -> list:
    """Problems that stop the file `path` from being written (its folder is made if needed)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return [f"{flag} {path}: is a folder, not a file"]
    folder = os.path.dirname(path)
    problem = _folder_problem(folder)
    if problem == "is a file, not a folder":
        problem = f"lies under the file {folder}"
    return [f"{flag} {path}: {problem}"] if problem else []
