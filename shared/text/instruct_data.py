"""Alpaca-format instruction data: reading, the prompt template, a seeded split, encoding.

An Alpaca file is one JSON list of objects with `instruction`, optional `input` and `output`
(the 52k `alpaca_data.json` and `instruction-data.json` of the source projects). Each entry
becomes the Alpaca prompt (below) and its response; encoded, it is a (context_ids,
completion_ids) pair, the very shape of an encoded E2E line, so `shared/batching.FTDataset`
and `shared/train/trainer.py` train on it unchanged:
- response-only loss (the default): context = prompt, completion = response + <|endoftext|>;
  FTDataset's mask covers the completion, so only response tokens are scored;
- full loss (`response_only=False`): context = the first prompt token alone, completion = the
  rest of the prompt + response + <|endoftext|>, so every predicted token is scored.
Encoded splits are written as `{split}.jsonl` (`{"context": ids, "completion": ids}` per line,
what `e2e_data.read_encoded` reads) next to `{split}_entries.json` (the raw entries, for
generation and scoring).

Bad input is an `InstructDataError` naming the file and, for an entry, its index: invalid JSON
(with line and column), a top level that is not a list, an entry that is not an object, a
missing or empty `instruction`, a missing `output`, a non-string field.
"""
from __future__ import annotations

import json
import os

import numpy as np

from shared.runtime.atomic import atomic_open, write_json
from shared.runtime.json_list import read_json_list
from shared.text.tokenizer import EOT_ID

SPLITS = ("train", "valid", "test")

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input "
                       "that provides further context. "
                       "Write a response that appropriately completes the request.")
RESPONSE_HEADER = "### Response:\n"


class InstructDataError(ValueError):
    """A malformed Alpaca file; the message names the file (and entry index)."""


def format_prompt(entry: dict) -> str:
    """The Alpaca prompt of an entry, ending with the response header (the model writes next)."""
    if entry.get("input"):
        return (f"{PREAMBLE_WITH_INPUT}\n\n### Instruction:\n{entry['instruction']}\n\n"
                f"### Input:\n{entry['input']}\n\n{RESPONSE_HEADER}")
    return f"{PREAMBLE}\n\n### Instruction:\n{entry['instruction']}\n\n{RESPONSE_HEADER}"


def read_entries(path) -> list:
    """The checked entries of an Alpaca JSON file, as dicts with instruction, input, output."""
    path = os.fspath(path)
    data = read_json_list(path, InstructDataError)
    return [_checked(entry, f"{path}: entry {index}") for index, entry in enumerate(data)]


def _checked(entry, where) -> dict:
    if not isinstance(entry, dict):
        raise InstructDataError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("instruction", "output"):
        if key not in entry:
            raise InstructDataError(f"{where}: has no {key!r} (keys: {sorted(entry)})")
    for key in ("instruction", "input", "output"):
        if key in entry and not isinstance(entry[key], str):
            raise InstructDataError(f"{where}: {key!r} is a {type(entry[key]).__name__}, "
                                    f"not a string")
    if not entry["instruction"].strip():
        raise InstructDataError(f"{where}: 'instruction' is empty")
    return {"instruction": entry["instruction"], "input": entry.get("input", ""),
            "output": entry["output"]}


def split_entries(entries: list, seed: int, valid_fraction: float = 0.05,
                  test_fraction: float = 0.1) -> dict:
    """{'train', 'valid', 'test'}: a numpy permutation from `seed`, test and valid taken first
    (each at least one entry), the rest for training; each entry keeps its file index `id`."""
    if not (0 < valid_fraction < 1 and 0 < test_fraction < 1
            and valid_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < valid_fraction, test_fraction and their sum < 1, got "
                         f"{valid_fraction}, {test_fraction}")
    n = len(entries)
    n_test = max(1, int(round(n * test_fraction)))
    n_valid = max(1, int(round(n * valid_fraction)))
    if n_test + n_valid >= n:
        raise ValueError(f"{n} entries are too few for a train/valid/test split")
    order = np.random.default_rng(int(seed)).permutation(n).tolist()
    parts = {"test": order[:n_test], "valid": order[n_test:n_test + n_valid],
             "train": order[n_test + n_valid:]}
    return {split: [dict(entries[i], id=i) for i in sorted(idx)] for split, idx in parts.items()}


def encode_entry(entry: dict, tokenizer, response_only: bool = True) -> dict:
    """{"context": ids, "completion": ids} of one entry (see the module docstring)."""
    prompt = tokenizer.encode(format_prompt(entry))
    response = tokenizer.encode(entry["output"]) + [EOT_ID]
    if response_only:
        return {"context": prompt, "completion": response}
    return {"context": prompt[:1], "completion": prompt[1:] + response}


def prepare_instruct(data_path, out_dir, tokenizer, seed: int, response_only: bool = True,
                     valid_fraction: float = 0.05, test_fraction: float = 0.1,
                     limit: int | None = None) -> dict:
    """Read, split and encode an Alpaca file into `out_dir`; returns {split: entry count}.

    `limit` keeps the first `limit` entries of the file (quick runs)."""
    entries = read_entries(data_path)
    if limit is not None:
        if limit < 1:  # a negative slice would drop entries from the end without a word
            raise ValueError(f"limit must be >= 1 (None: every entry), got {limit}")
        entries = entries[:limit]
    splits = split_entries(entries, seed, valid_fraction, test_fraction)
    os.makedirs(out_dir, exist_ok=True)
    for split, items in splits.items():
        with atomic_open(os.path.join(out_dir, f"{split}.jsonl")) as f:
            for entry in items:
                f.write(json.dumps(encode_entry(entry, tokenizer, response_only)) + "\n")
        write_json(os.path.join(out_dir, f"{split}_entries.json"), items)
    return {split: len(items) for split, items in splits.items()}


def read_split_entries(path) -> list:
    """The entries `prepare_instruct` wrote for a split (`{split}_entries.json`)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
