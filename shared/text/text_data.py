"""Raw text for pretraining: UTF-8 files -> one GPT-2 token stream -> fixed windows.

Each file is encoded on its own and the files are joined with <|endoftext|> between them, as
GPT-2's training documents are. The last `valid_fraction` of the stream is held out for
validation (a tail, not a random sample, so no window of the validation set overlaps training).
Windows start every `stride` tokens: input = tokens[s : s + seq_len], target = the same shifted
by one, mask = 1 everywhere, i.e. the batch format of `shared.text.batching.FTDataset`, so the shared
trainer and both backends' language-model losses run on it unchanged.
Training order in epoch e is a permutation from `numpy.random.default_rng([seed, e])`, so a
resumed run sees the same order; evaluation batches are sequential.
"""
from __future__ import annotations

import numpy as np

from shared.runtime.utf8_file import read_utf8
from shared.text.seeded_batches import SeededBatches

EOT_ID = 50256


class TextDataError(ValueError):
    """Text input that cannot be used; the message names the file."""


def read_text_file(path) -> str:
    """The text of one file; a clear error for a missing, non-UTF-8 or empty file."""
    text = read_utf8(path, TextDataError, "text file")
    if not text.strip():
        raise TextDataError(f"{path}: the file is empty (no text to train on)")
    return text


def token_stream(paths, tokenizer) -> np.ndarray:
    """All files as one int64 token stream, <|endoftext|> between files."""
    if not paths:
        raise TextDataError("no text files given")
    stream = []
    for index, path in enumerate(paths):
        if index:
            stream.append(EOT_ID)
        stream.extend(tokenizer.encode(read_text_file(path)))
    return np.asarray(stream, dtype=np.int64)


def split_tail(tokens, valid_fraction: float, seq_len: int):
    """(train tokens, validation tokens): the last `valid_fraction` of the stream is held out.

    Both parts must hold at least one window (seq_len + 1 tokens)."""
    if not 0.0 < valid_fraction < 1.0:
        raise TextDataError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    cut = int(round(len(tokens) * (1.0 - valid_fraction)))
    train, valid = tokens[:cut], tokens[cut:]
    for name, part in (("training", train), ("validation", valid)):
        if len(part) < seq_len + 1:
            raise TextDataError(
                f"the {name} part has {len(part)} tokens (of {len(tokens)}; valid_fraction "
                f"{valid_fraction}), fewer than seq_len + 1 = {seq_len + 1}: give more text, a "
                f"shorter --seq_len or another --valid_fraction")
    return train, valid


class WindowDataset(SeededBatches):
    """Windows over a token stream, batched as the trainer expects (`FTDataset`'s interface, the
    order of shared/text/seeded_batches.py)."""

    def __init__(self, tokens, seq_len: int, stride: int, batch_size: int, name="text"):
        if seq_len < 1 or stride < 1 or batch_size < 1:
            raise TextDataError(f"seq_len, stride and batch_size must be >= 1, got {seq_len}, "
                                f"{stride}, {batch_size}")
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.seq_len, self.stride, self.batch_size, self.name = seq_len, stride, batch_size, name
        self.source = name  # the trainer's messages name the dataset by it
        if len(self.tokens) < seq_len + 1:
            raise TextDataError(f"{name}: {len(self.tokens)} tokens, fewer than seq_len + 1 = "
                                f"{seq_len + 1}")
        self.starts = list(range(0, len(self.tokens) - seq_len, stride))
        self.num_examples = len(self.starts)

    def covered_tokens(self) -> int:
        """How many tokens of the stream some window trains on (as input or target)."""
        covered = np.zeros(len(self.tokens), dtype=bool)
        for s in self.starts:
            covered[s:s + self.seq_len + 1] = True
        return int(covered.sum())

    def truncation_report(self) -> str:
        """A warning when windows skip tokens (stride > seq_len, or a tail shorter than a step)."""
        unused = len(self.tokens) - self.covered_tokens()
        if not unused:
            return ""
        return (f"{self.name}: {unused} of {len(self.tokens)} tokens fall outside every window "
                f"(seq_len {self.seq_len}, stride {self.stride})")

    def completion_report(self) -> str:
        """A loud warning when most of the stream is never a target (a stride far above seq_len
        trains on a fraction of the text), or ""."""
        scored = np.zeros(len(self.tokens), dtype=bool)
        for start in self.starts:
            scored[start + 1:start + self.seq_len + 1] = True
        scored = int(scored.sum())
        if 2 * scored >= len(self.tokens) - 1:
            return ""
        return (f"WARNING: {self.name}: only {scored} of {len(self.tokens) - 1} tokens are ever "
                f"predicted (seq_len {self.seq_len}, stride {self.stride}): most of the text is "
                f"skipped. Lower --stride to at most --seq_len.")

    def keeps_no_completion(self) -> bool:
        """True when no window scores a token: a stream shorter than one window (the constructor
        already refuses it, so a dataset that exists always trains on something)."""
        return self.num_examples == 0

    def no_completion_error(self) -> str:
        return (f"{self.name}: {len(self.tokens)} tokens make no window of seq_len + 1 = "
                f"{self.seq_len + 1} tokens: give more text or a shorter --seq_len")

    def collate(self, window_indices) -> dict:
        starts = [self.starts[i] for i in window_indices]
        inputs = np.stack([self.tokens[s:s + self.seq_len] for s in starts])
        targets = np.stack([self.tokens[s + 1:s + self.seq_len + 1] for s in starts])
        return {"input": inputs, "target": targets, "mask": np.ones(inputs.shape, np.float32)}
