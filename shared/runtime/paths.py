"""Where the data lives: a command-line flag wins, then an environment variable, then `data/`.

Data is never committed; `scripts/download_data.sh` fetches it into `data/e2e` and `data/gpt2`
under the repository root, and CI points GPT2_VOCAB_DIR / E2E_DATA_DIR at an offline copy.
"""
from __future__ import annotations

import os

# shared/runtime/paths.py -> the checkout (where setup.py, scripts/ and data/ are)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_VOCAB_DIR = os.path.join(REPO_ROOT, "data", "gpt2")
DEFAULT_E2E_DIR = os.path.join(REPO_ROOT, "data", "e2e")
VOCAB_FILES = ("encoder.json", "vocab.bpe")
E2E_SPLITS = ("train", "valid", "test")
_HOW_TO_GET = "run `bash scripts/download_data.sh` (needs internet) or point {env} at a copy"


class DataDirError(FileNotFoundError):
    """A data path (folder or file) that is missing or lacks files the caller needs; the message
    names the flag or variable it came from and says how to get the data where it can."""


def missing_files(names):
    """A `check` for resolve_data_path: the folder must hold all of `names`."""
    def check(path):
        if not os.path.isdir(path):
            return "folder not found"
        missing = [n for n in names if not os.path.isfile(os.path.join(path, n))]
        return f"lacks {', '.join(missing)}" if missing else None
    return check


def file_check(path):
    """A `check` for resolve_data_path: the path must be a file."""
    return None if os.path.isfile(path) else "file not found"


def resolve_data_path(value, env, defaults=(), *, flag, what, check=None, check_given=True,
                      required=True, many=False, how=None):
    """Where a piece of data is, by the project's one rule: flag > environment variable > default.

    `value` is the flag's value (`flag` its name, for messages), `env` the variable's name,
    `defaults` the fallback candidates in order. `check(path)` returns None for a usable path,
    else why not ("file not found", "lacks x.txt"). A path the user named (flag or variable) is
    checked when `check_given` and is an error when unusable, never silently passed over; of the
    defaults, the first usable one is taken. With `many`, the flag gives a list and the variable
    several paths separated by os.pathsep; a list comes back. Nothing found: DataDirError naming
    the flag, the variable and the defaults tried, or None when not `required`. `how` (how to get
    the data) ends every message.
    """
    tail = f"; {how}" if how else ""
    given, origin = [os.fspath(p) for p in ((value or ()) if many else [value]) if p], flag
    if not given and os.environ.get(env):
        named = os.environ[env]
        given, origin = [p for p in named.split(os.pathsep) if p] if many else [named], env
    if given:
        for path in given:
            problem = check(path) if check and check_given else None
            if problem:
                raise DataDirError(f"{what} {path} (from {origin}): {problem}{tail}")
        return given if many else given[0]
    tried = []
    for default in defaults:
        paths = list(default) if many else [default]
        problems = [f"{p}: {why}" for p, why in ((p, check and check(p)) for p in paths) if why]
        if not problems:
            return paths if many else default
        tried += problems
    if not required:
        return None
    where = f" (default {'; '.join(tried)})" if tried else ""
    raise DataDirError(f"{what} not found: give {flag} or set {env}{where}{tail}")


def resolve_vocab_dir(flag=None):
    """The GPT-2 vocabulary folder (encoder.json + vocab.bpe), or None for tiktoken's own copy.

    Order: `flag`, env GPT2_VOCAB_DIR, `data/gpt2` when download_data.sh has filled it, else None
    (tiktoken downloads the same two files once and caches them). A named folder is checked by
    the tokenizer, whose messages say more (which file, which line).
    """
    return resolve_data_path(flag, "GPT2_VOCAB_DIR", [DEFAULT_VOCAB_DIR], flag="--vocab",
                             what="GPT-2 vocab folder", check=missing_files(VOCAB_FILES),
                             check_given=False, required=False)


def resolve_e2e_dir(flag=None, splits=E2E_SPLITS):
    """The folder with the raw E2E `{split}.txt` files (`MR||text` lines); checked to hold `splits`.

    Order: `flag`, env E2E_DATA_DIR, `data/e2e` under the repository root.
    """
    return resolve_data_path(flag, "E2E_DATA_DIR", [DEFAULT_E2E_DIR], flag="--data_dir",
                             what="E2E data folder",
                             check=missing_files([f"{s}.txt" for s in splits]),
                             how=_HOW_TO_GET.format(env="E2E_DATA_DIR"))
