"""Fine-tuning batches exactly as microsoft/LoRA's `FT_Dataset` (examples/NLG/src/data_utils.py).

Each example (context ids, completion ids) gives, padded with 0 to `seq_len`:
  input  = context + completion                  (cut to seq_len from the right)
  target = (context + completion)[1:]            (the next token at each position)
  mask   = 0.0 over the context, 1.0 over the completion, 0.0 on padding  (float32)
  query  = context, cut to `seq_len - eval_len` from the LEFT, and its length (for generation).

Long inputs are never cut silently: a context longer than `seq_len - eval_len` loses its head in
the query (the reference's rule: the most recent tokens matter for generation), and a
context + completion longer than `seq_len` loses its tail in training. `FTDataset` counts both and
`truncation_report()` names the first offending example (and file:line); scripts print it.

Batches are always full: a dataset of n examples has `num_batches * batch_size` items and an item
>= n is replaced by `rng.randint(0, n - 1)`, `rng = random.Random(911)`, drawn in access order.
Training order in epoch e (counted from 1) is a permutation from `numpy.random.default_rng([seed,
e])` followed by that fill rule; the fill rng carries over from epoch to epoch as in the
reference, and since each epoch makes exactly `num_batches * batch_size - n` draws,
`train_order(e)` replays epochs 1..e-1 on its own: a resumed run sees the identical order.
Evaluation batches are sequential and start from a fresh Random(911) each time (the reference
reuses its valid-set rng across evaluations; ours gives the same batches on every evaluation).

Collation stacks numpy arrays (int64 ids, float32 mask) and, with `trim=True` (the default),
drops the columns past the batch's longest real length. That is exact: attention is causal, so
the kept positions never see the dropped ones, and every dropped position has mask 0, so the
masked loss is unchanged. `trim=False` gives the reference's full `seq_len` padding.
"""
from __future__ import annotations

import math
import random

import numpy as np

from shared.text.e2e_data import read_encoded

FILL_SEED = 911
PAD_ID = 0


def padding_tokens(tokens, max_seq_length, pad_token, direct):
    """Cut `tokens` to `max_seq_length` (direct > 0 keeps the head, < 0 keeps the tail), then pad
    on the right; returns (padded list, length before padding)."""
    if len(tokens) > max_seq_length:
        tokens = tokens[:max_seq_length] if direct > 0 else tokens[-max_seq_length:]
    return tokens + [pad_token] * (max_seq_length - len(tokens)), len(tokens)


class FTDataset:
    """E2E examples (lists of (context_ids, completion_ids)) as the reference's batches."""

    def __init__(self, samples, batch_size, seq_len, eval_len=0, source=None):
        if not samples:
            raise ValueError(f"no examples{f' in {source}' if source else ''}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= eval_len < seq_len:
            raise ValueError(f"need 0 <= eval_len < seq_len, got eval_len={eval_len}, "
                             f"seq_len={seq_len}")
        self.samples = [(list(c), list(t)) for c, t in samples]
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.eval_len = eval_len
        self.source = source
        self.num_examples = len(self.samples)
        self.num_batches = math.ceil(self.num_examples / batch_size)
        self.query_limit = seq_len - eval_len
        self.query_truncated = [i for i, (c, _) in enumerate(self.samples)
                                if len(c) > self.query_limit]
        self.train_truncated = [i for i, (c, t) in enumerate(self.samples)
                                if len(c) + len(t) > seq_len]
        # examples whose loss mask is all zero: seq_len cuts every completion token away
        self.no_completion = [i for i, (c, _) in enumerate(self.samples) if len(c) >= seq_len]

    @classmethod
    def from_file(cls, path, batch_size, seq_len, eval_len=0):
        """Read an encoded jsonl (`{split}.jsonl`) with `e2e_data.read_encoded`."""
        return cls(read_encoded(path), batch_size, seq_len, eval_len, source=str(path))

    def __len__(self):
        return self.num_batches * self.batch_size

    # ------------------------------------------------------------------------ one example
    def example(self, item) -> dict:
        """The reference's `__getitem__` for an index < num_examples (no fill)."""
        context, completion = self.samples[item]
        full = context + completion
        input_ids, input_len = padding_tokens(full, self.seq_len, PAD_ID, 1)
        target, _ = padding_tokens(full[1:], self.seq_len, PAD_ID, 1)
        mask = [0.0] * (len(context) - 1) + [1.0] * (input_len - len(context))
        mask, _ = padding_tokens(mask, self.seq_len, 0.0, 1)
        query, query_len = padding_tokens(context, self.query_limit, PAD_ID, -1)
        return {"id": item, "input": input_ids, "input_len": input_len, "target": target,
                "mask": mask, "query": query, "query_len": query_len}

    def _filled(self, indices, rng):
        """Apply the fill rule in access order: an index >= num_examples becomes a random one."""
        return [i if i < self.num_examples else rng.randint(0, self.num_examples - 1)
                for i in indices]

    # ------------------------------------------------------------------------------ orders
    def train_order(self, epoch, seed) -> list:
        """Example indices of epoch `epoch` (>= 1), the same whether or not earlier epochs ran."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        rng = random.Random(FILL_SEED)
        fills_per_epoch = len(self) - self.num_examples
        for _ in range((epoch - 1) * fills_per_epoch):
            rng.randint(0, self.num_examples - 1)
        perm = np.random.default_rng([seed, epoch]).permutation(len(self))
        return self._filled(perm.tolist(), rng)

    def eval_order(self, batch_size=None) -> list:
        """Sequential indices padded to full batches from a fresh Random(911)."""
        batch_size = batch_size or self.batch_size
        total = math.ceil(self.num_examples / batch_size) * batch_size
        return self._filled(range(total), random.Random(FILL_SEED))

    # ----------------------------------------------------------------------------- batches
    def train_batches(self, epoch, seed, start_batch=0, trim=True):
        """Collated batches of `train_order(epoch, seed)`, skipping the first `start_batch`."""
        order = self.train_order(epoch, seed)
        for b in range(start_batch, self.num_batches):
            yield self.collate(order[b * self.batch_size:(b + 1) * self.batch_size], trim)

    def eval_batches(self, batch_size=None, trim=True):
        """Sequential full batches (the last one filled), the same on every call."""
        batch_size = batch_size or self.batch_size
        order = self.eval_order(batch_size)
        for start in range(0, len(order), batch_size):
            yield self.collate(order[start:start + batch_size], trim)

    def first_of_each_context(self) -> list:
        """Indices of the first example of each distinct context, in order. E2E repeats an MR
        once per reference (4693 test lines, 630 MRs); gpt2_decode.py only reads the prediction
        of each MR's first line, so generating for these alone gives the same output files."""
        seen, firsts = set(), []
        for index, (context, _) in enumerate(self.samples):
            key = tuple(context)
            if key not in seen:
                seen.add(key)
                firsts.append(index)
        return firsts

    def query_batches(self, batch_size, trim=True, items=None):
        """Sequential {"id", "query", "query_len"} batches for generation over `items` (default:
        every example); the last may be short (no fill: beam search results do not depend on
        the batch size)."""
        items = list(range(self.num_examples)) if items is None else list(items)
        for start in range(0, len(items), batch_size):
            batch = self.collate(items[start:start + batch_size], trim)
            yield {k: batch[k] for k in ("id", "query", "query_len")}

    def collate(self, indices, trim=True) -> dict:
        """Stack the examples of `indices` into numpy arrays (see the module docstring)."""
        examples = [self.example(i) for i in indices]
        batch = {
            "id": np.array([e["id"] for e in examples], dtype=np.int64),
            "input": np.array([e["input"] for e in examples], dtype=np.int64),
            "target": np.array([e["target"] for e in examples], dtype=np.int64),
            "mask": np.array([e["mask"] for e in examples], dtype=np.float32),
            "query": np.array([e["query"] for e in examples], dtype=np.int64),
            "query_len": np.array([e["query_len"] for e in examples], dtype=np.int64),
        }
        if trim:
            width = max(e["input_len"] for e in examples)
            for key in ("input", "target", "mask"):
                batch[key] = batch[key][:, :width]
            batch["query"] = batch["query"][:, :int(batch["query_len"].max())]
        return batch

    # -------------------------------------------------------------------------- reporting
    def _where(self, item):
        # read_encoded rejects blank lines, so example i is line i + 1 of its file.
        return f"example {item}" + (f" ({self.source}:{item + 1})" if self.source else "")

    def completion_report(self) -> str:
        """A loud warning when most examples keep no completion token at this seq_len (they add
        nothing to the loss), or "". `keeps_no_completion()` says whether none keeps one."""
        if len(self.no_completion) * 2 <= self.num_examples:
            return ""
        i = self.no_completion[0]
        return (f"WARNING: {len(self.no_completion)} of {self.num_examples} examples keep no "
                f"completion token at seq_len = {self.seq_len} (their context fills it; first: "
                f"{self._where(i)}, context of {len(self.samples[i][0])} tokens): they add "
                f"nothing to the loss. Raise --seq_len.")

    def keeps_no_completion(self) -> bool:
        return len(self.no_completion) == self.num_examples

    def no_completion_error(self) -> str:
        """Why training must not start when `keeps_no_completion()` (the trainer raises it)."""
        return (f"no example keeps a completion token at --seq_len {self.seq_len} in "
                f"{self.source}: every context is at least that long, so the loss would be 0 "
                f"and the run would look perfect. Raise --seq_len")

    def truncation_report(self) -> str:
        """A readable warning about truncated examples, or "" when nothing is cut."""
        parts = []
        if self.query_truncated:
            i = self.query_truncated[0]
            parts.append(
                f"{len(self.query_truncated)} of {self.num_examples} contexts are longer than "
                f"seq_len - eval_len = {self.query_limit} tokens and lose their beginning in the "
                f"generation query (first: {self._where(i)}, {len(self.samples[i][0])} tokens)")
        if self.train_truncated:
            i = self.train_truncated[0]
            c, t = self.samples[i]
            parts.append(
                f"{len(self.train_truncated)} of {self.num_examples} context+completion pairs "
                f"are longer than seq_len = {self.seq_len} tokens and lose their end in "
                f"training (first: {self._where(i)}, {len(c) + len(t)} tokens)")
        return "; ".join(parts)


def check_width(width: int, n_positions: int) -> None:
    """A sequence of `width` positions must fit the position table."""
    if width > n_positions:
        raise ValueError(f"a sequence of {width} positions exceeds the model's {n_positions} "
                         f"positions (n_positions)")


def check_token_ids(ids: np.ndarray, vocab_size: int) -> None:
    """Host-side ids must index the token table (Jittor reads garbage past a table)."""
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"token id {high if high >= vocab_size else low} is outside the "
                             f"vocabulary [0, {vocab_size})")


def check_lengths(lengths: np.ndarray, width: int) -> None:
    """Real lengths of padded rows (a classifier reads position length - 1): in [1, width]."""
    if lengths.size:
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > width:
            raise ValueError(f"row length {low if low < 1 else high} is outside [1, {width}] "
                             f"(the batch's width)")


def check_batch(batch, config) -> None:
    """Width and ids of a numpy batch inside the model's tables, checked once on the host before
    the batch reaches a device, where an out-of-range lookup is garbage (Jittor) or an assert:
    every batch's `input`; a language-model batch's `target` ids and `mask` shape; a
    classification batch's row `length`s (the position its head reads)."""
    inputs = batch["input"]
    check_width(inputs.shape[-1], config.n_positions)
    check_token_ids(inputs, config.vocab_size)
    if "target" in batch:
        check_token_ids(batch["target"], config.vocab_size)
        for key in ("target", "mask"):
            if batch[key].shape != inputs.shape:
                raise ValueError(f"batch {key} has shape {batch[key].shape}, input "
                                 f"{inputs.shape}")
    if "length" in batch:
        check_lengths(batch["length"], inputs.shape[-1])
