"""Preference pairs (an Alpaca prompt with a `chosen` and a `rejected` response): reading,
checking, a seeded split and the batches that reward-model training and DPO read.

The file is a JSON list of objects with `instruction`, optional `input`, and `chosen` and
`rejected` responses (`instruction-data-with-preference.json` of the source project; other keys
such as `output` are ignored). The prompt is the project's Alpaca template
(`shared/text/instruct_data.format_prompt`), so a model instruction-tuned by `instruct_ft.py` sees the
prompts it learned; the split is `instruct_data.split_entries` (same seed, same entries per split
as instruction tuning on the same file).

A pair is encoded as two sequences, prompt + response + <|endoftext|>, each cut to `seq_len`
tokens. Nothing is cut silently: a pair whose response is cut counts as cut; a pair whose prompt
fills `seq_len` (no response token left) or whose two sequences are equal after the cut is
dropped and counted; a split that keeps no pair is refused. `truncation_report()` says how many
(first entry named), and the scripts print it.

Batches of B pairs have 2B rows, the B chosen sequences first, then the B rejected ones in the
same order, padded with <|endoftext|> to the longest row (or to `seq_len` with `fixed_width`):
  input  (2B, W) int64   token ids
  length (2B,)   int64   real length (the reward head reads position length - 1)
  target (2B, W) int64   the next token at each position (padding: <|endoftext|>)
  mask   (2B, W) float32 1 where the target is a response token (the sequence log-probability
                         that DPO compares sums the log-probabilities under this mask)
Training order in epoch e is the permutation `numpy.random.default_rng([seed, e])` (resumable;
shared/text/seeded_batches.py); evaluation is sequential.

Bad input is a `PreferenceDataError` (a ValueError) naming the file and the entry index: a
missing, empty or non-string `instruction`, `chosen` or `rejected`, and a pair whose chosen and
rejected are the same response (refused unless the caller asks to leave such pairs out: the
source project's file holds six).
"""
from __future__ import annotations

import os

import numpy as np

from shared.text.instruct_data import format_prompt, split_entries
from shared.runtime.json_list import read_json_list
from shared.text.seeded_batches import SeededBatches
from shared.text.tokenizer import EOT_ID

RESPONSE_KEYS = ("chosen", "rejected")


class PreferenceDataError(ValueError):
    """Preference data that cannot be used; the message names the file and entry (or split)."""


def read_preference_entries(path) -> list:
    """The checked entries of a preference JSON file: dicts with instruction, input, chosen and
    rejected (strings, chosen and rejected non-empty; whether they differ is checked by
    `split_preference_entries`, which can leave equal ones out)."""
    path = os.fspath(path)
    data = read_json_list(path, PreferenceDataError)
    return [_checked(entry, f"{path}: entry {index}") for index, entry in enumerate(data)]


def equal_pair_problem(entries, path) -> str:
    """The error for entries whose chosen and rejected are the same response, or ""."""
    equal = [i for i, e in enumerate(entries) if e["chosen"] == e["rejected"]]
    if not equal:
        return ""
    return (f"{path}: entry {equal[0]}: 'chosen' and 'rejected' are the same response, which "
            f"ranks nothing ({len(equal)} such entries: {equal[:10]}"
            f"{' ...' if len(equal) > 10 else ''}); pass --drop_equal_pairs to leave them out")


def _checked(entry, where) -> dict:
    if not isinstance(entry, dict):
        raise PreferenceDataError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("instruction",) + RESPONSE_KEYS:
        if key not in entry:
            raise PreferenceDataError(f"{where}: has no {key!r} (keys: {sorted(entry)})")
    for key in ("instruction", "input") + RESPONSE_KEYS:
        if key in entry and not isinstance(entry[key], str):
            raise PreferenceDataError(f"{where}: {key!r} is a {type(entry[key]).__name__}, "
                                      f"not a string")
    for key in ("instruction",) + RESPONSE_KEYS:
        if not entry[key].strip():
            raise PreferenceDataError(f"{where}: {key!r} is empty")
    return {"instruction": entry["instruction"], "input": entry.get("input", ""),
            "chosen": entry["chosen"], "rejected": entry["rejected"]}


def split_preference_entries(path, seed: int, valid_fraction: float = 0.05,
                             test_fraction: float = 0.1, limit: int | None = None,
                             drop_equal: bool = False) -> tuple:
    """({'train', 'valid', 'test'}: entries, [file indices of equal pairs left out]) of a
    preference file: its first `limit` entries when given, entries whose chosen and rejected are
    equal refused (or, with `drop_equal`, left out and listed), split by
    `instruct_data.split_entries`; each entry keeps its file index `id`."""
    entries = read_preference_entries(path)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 (None: every entry), got {limit}")
        entries = entries[:limit]
    indexed = [dict(e, id=i) for i, e in enumerate(entries)]
    problem = equal_pair_problem(entries, path)
    if problem and not drop_equal:
        raise PreferenceDataError(problem)
    kept = [e for e in indexed if e["chosen"] != e["rejected"]]
    dropped = [e["id"] for e in indexed if e["chosen"] == e["rejected"]]
    try:
        splits = split_entries(kept, seed, valid_fraction, test_fraction)
    except ValueError as exc:
        raise PreferenceDataError(f"{path}: {exc}") from exc
    for items in splits.values():  # split_entries numbers the kept list: back to file indices
        for item in items:
            item["id"] = kept[item["id"]]["id"]
    return splits, dropped


def encode_pair(entry: dict, tokenizer) -> tuple:
    """(prompt ids, chosen ids, rejected ids); each response ends with <|endoftext|>."""
    prompt = tokenizer.encode(format_prompt(entry))
    return (prompt, tokenizer.encode(entry["chosen"]) + [EOT_ID],
            tokenizer.encode(entry["rejected"]) + [EOT_ID])


class PreferenceDataset(SeededBatches):
    """Encoded preference pairs batched for shared/train/trainer.py (`FTDataset`'s batch
    interface, the order of shared/text/seeded_batches.py)."""

    def __init__(self, entries, tokenizer, batch_size, seq_len, name="data", fixed_width=False):
        if batch_size < 1 or seq_len < 2:
            raise PreferenceDataError(f"{name}: need batch_size >= 1 and seq_len >= 2, got "
                                      f"{batch_size}, {seq_len}")
        self.name = self.source = name  # the trainer's messages name the dataset by `source`
        self.batch_size, self.seq_len, self.fixed_width = batch_size, seq_len, fixed_width
        self.entries, self.pairs = [], []  # kept entries; (prompt len, chosen ids, rejected ids)
        self.cut, self.prompt_fills, self.cut_equal = [], [], []  # entry ids
        for index, entry in enumerate(entries):
            prompt, chosen, rejected = encode_pair(entry, tokenizer)
            ident = entry.get("id", index)  # the file index where the split kept it
            if len(prompt) >= seq_len:
                self.prompt_fills.append(ident)
                continue
            full_c, full_r = prompt + chosen, prompt + rejected
            if max(len(full_c), len(full_r)) > seq_len:
                full_c, full_r = full_c[:seq_len], full_r[:seq_len]
                if full_c == full_r:
                    self.cut_equal.append(ident)
                    continue
                self.cut.append(ident)
            self.entries.append(entry)
            self.pairs.append((len(prompt), full_c, full_r))
        if not self.pairs:
            raise PreferenceDataError(self.no_pair_error(len(entries)))
        self.num_examples = len(self.pairs)

    def no_pair_error(self, n_entries) -> str:
        return (f"{self.name}: no pair of its {n_entries} entries fits --seq_len {self.seq_len}: "
                f"{len(self.prompt_fills)} prompts fill it (first: entry "
                f"{(self.prompt_fills or self.cut_equal)[0]}), {len(self.cut_equal)} pairs are "
                f"equal once cut. Raise --seq_len")

    def truncation_report(self) -> str:
        """What the cut did to this split, or "" (nothing cut or dropped)."""
        parts = []
        if self.cut:
            parts.append(f"{len(self.cut)} of {self.num_examples} pairs cut at --seq_len "
                         f"{self.seq_len} (first: entry {self.cut[0]})")
        if self.prompt_fills:
            parts.append(f"{len(self.prompt_fills)} dropped: the prompt fills --seq_len "
                         f"(first: entry {self.prompt_fills[0]})")
        if self.cut_equal:
            parts.append(f"{len(self.cut_equal)} dropped: chosen and rejected equal once cut "
                         f"(first: entry {self.cut_equal[0]})")
        return f"{self.name}: " + "; ".join(parts) if parts else ""

    def counts(self) -> dict:
        return {"pairs": self.num_examples, "cut": len(self.cut),
                "dropped_prompt_fills_seq_len": len(self.prompt_fills),
                "dropped_equal_once_cut": len(self.cut_equal)}

    def completion_report(self) -> str:
        return ""  # a kept pair always holds response tokens of both responses

    def keeps_no_completion(self) -> bool:
        return False  # refused in __init__ instead

    def collate(self, indices) -> dict:
        rows = [self.pairs[i][1] for i in indices] + [self.pairs[i][2] for i in indices]
        starts = [self.pairs[i][0] for i in indices] * 2
        width = self.seq_len if self.fixed_width else max(len(r) for r in rows)
        inputs = np.full((len(rows), width), EOT_ID, dtype=np.int64)
        target = np.full((len(rows), width), EOT_ID, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.float32)
        for row, (ids, start) in enumerate(zip(rows, starts)):
            inputs[row, :len(ids)] = ids
            target[row, :len(ids) - 1] = ids[1:]
            mask[row, start - 1:len(ids) - 1] = 1.0  # positions whose next token is a response's
        return {"input": inputs, "length": np.array([len(r) for r in rows], dtype=np.int64),
                "target": target, "mask": mask}
