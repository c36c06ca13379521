"""Where the data lives: a command-line flag wins, then an environment variable, then `data/`.

Data is never committed; `scripts/download_data.sh` fetches it into `data/e2e` and `data/gpt2`
under the repository root, and CI points GPT2_VOCAB_DIR / E2E_DATA_DIR at an offline copy.
"""
from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VOCAB_DIR = os.path.join(REPO_ROOT, "data", "gpt2")
DEFAULT_E2E_DIR = os.path.join(REPO_ROOT, "data", "e2e")
VOCAB_FILES = ("encoder.json", "vocab.bpe")
E2E_SPLITS = ("train", "valid", "test")
_HOW_TO_GET = "run `bash scripts/download_data.sh` (needs internet) or point {env} at a copy"


class DataDirError(FileNotFoundError):
    """A data folder that is missing or lacks files the caller needs; says how to get them."""


def resolve_vocab_dir(flag=None):
    """The GPT-2 vocabulary folder (encoder.json + vocab.bpe), or None for tiktoken's own copy.

    Order: `flag`, env GPT2_VOCAB_DIR, `data/gpt2` when download_data.sh has filled it, else None
    (tiktoken downloads the same two files once and caches them).
    """
    if flag:
        return os.fspath(flag)
    if os.environ.get("GPT2_VOCAB_DIR"):
        return os.environ["GPT2_VOCAB_DIR"]
    if all(os.path.isfile(os.path.join(DEFAULT_VOCAB_DIR, f)) for f in VOCAB_FILES):
        return DEFAULT_VOCAB_DIR
    return None


def resolve_e2e_dir(flag=None, splits=E2E_SPLITS):
    """The folder with the raw E2E `{split}.txt` files (`MR||text` lines); checked to hold `splits`.

    Order: `flag`, env E2E_DATA_DIR, `data/e2e` under the repository root.
    """
    if flag:
        path, origin = os.fspath(flag), "the --data_dir flag"
    elif os.environ.get("E2E_DATA_DIR"):
        path, origin = os.environ["E2E_DATA_DIR"], "E2E_DATA_DIR"
    else:
        path, origin = DEFAULT_E2E_DIR, "the default location"
    missing = [f"{s}.txt" for s in splits if not os.path.isfile(os.path.join(path, f"{s}.txt"))]
    if missing:
        raise DataDirError(
            f"E2E data folder {path} (from {origin}) lacks {', '.join(missing)}; "
            + _HOW_TO_GET.format(env="E2E_DATA_DIR"))
    return path
