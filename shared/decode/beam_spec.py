"""Beam search as microsoft/LoRA `examples/NLG/src/gpt2_beam.py` runs it: the written spec, its
settings, and a plain numpy reference implementation that the device versions
(`torch_impl/beam.py`, `jittor_impl/beam.py`) are tested against.

Notation: one query q (token ids), K = beam, V = vocabulary size, T = eval_len. A *row* is one
beam: a generated history h (token ids after the query) and a float32 score s. "-inf" is IEEE
negative infinity.

Per query (queries never interact; batching is an implementation detail):

1. Start: one row, h = [], s = 0.
2. For step t = 0 .. T-1 (cur_len = t = len(h) of every row):
   a. logits (V,) of every row = the model's next-token logits after the prefix q + h, raw.
   b. Post-processing, in this order, per row:
      - repetition penalty p (only if p != 1): for every distinct token x in h (tokens of the
        query do not count): logits[x] *= p if logits[x] < 0 else logits[x] /= p (CTRL);
      - min_length: if cur_len < min_length, logits[e] = -inf for every e in eos_token_ids;
      - no-repeat n-gram, n = no_repeat_ngram_size (only if n > 0 and cur_len + 1 >= n): for
        every start j with j + n <= cur_len such that h[j : j+n-1] == h[cur_len-n+1 : cur_len]
        (the row's last n-1 tokens; empty for n = 1, which matches every j), logits[h[j+n-1]]
        = -inf (fairseq's rule: no n-gram appears twice in a row's own history).
   c. logprob = log(softmax(logits)) in float32 (log of the probabilities, as the reference
      computes it, not a fused log-softmax).
   d. Candidates: (r, x) for every row r and token x, with score s_r + logprob_r[x] and flat
      index r * V + x. At t = 0 there is one row, so only beam 0 is expanded (the reference
      repeats the query K times but reads the first copy only).
   e. Keep the K best candidates, ordered by score descending; equal scores (-inf included)
      are ordered by flat index ascending. Row k of the next step is the k-th kept candidate:
      h = h_r + [x], s = its score.
   f. Finished rows: for each row k = 0 .. K-1 in order whose last token is in eos_token_ids,
      offer it (rule 4), then set its score to -inf. A finished row is *not* removed: it keeps
      being extended like any other row, but with score -inf it is only kept when fewer than K
      finite candidates exist, and an offer of -inf never beats an earlier best.
3. After the loop, offer every row k = 0 .. K-1 in order (whatever its last token).
4. Offer(s, h): candidate score = s / len(h) ** length_penalty (len(h) counts the eos token;
   correctly rounded float32 division by the float32 value of the power: Jittor and torch on
   CUDA divide by multiplying with a reciprocal, 1 ulp off, so the device versions divide in
   float64 and round). It becomes the query's best if no
   best exists yet or it is strictly greater than the best score, so among equal scores the
   earliest offered wins. The best sequence is h written at the front of T zeros; every later
   best is at least as long, so no tokens of an earlier best survive.
5. Output: the best sequence, T token ids, zero-padded (zero is also a real token id, '!').

Guarantees. The numpy reference below follows the rules exactly, ties included. The device
versions implement the same rules, the tie order of 2e included (they select by value with an
explicit index tie-break instead of trusting the framework's top-k order). What they cannot
guarantee is bit-identical logits: each framework (and device) sums in its own order, so two
candidates within a few ulps of each other may rank differently across backends, devices or
batch sizes (a query's padding and its batch neighbours change reduction shapes), and Jittor's
repetition penalty divides by multiplying with 1/p (1 ulp). Outputs match exactly whenever no
decision falls inside that noise, which the alignment tests check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from shared.runtime.arg_types import finite_float, non_negative_int, positive_float, positive_int

EOT_ID = 50256  # GPT-2's <|endoftext|>, the reference's default eos_token_id
NEG_INF = np.float32(-np.inf)


@dataclass(frozen=True)
class BeamSettings:
    """The decoding flags of gpt2_beam.py (same names and defaults, eval_len/min_length too)."""
    beam: int = 1
    eval_len: int = 256
    min_length: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 4
    repetition_penalty: float = 1.0
    eos_token_ids: tuple = (EOT_ID,)

    def __post_init__(self):
        object.__setattr__(self, "eos_token_ids", tuple(int(e) for e in self.eos_token_ids))
        if int(self.beam) < 1:
            raise ValueError(f"BeamSettings: beam must be >= 1, got {self.beam}")
        if int(self.eval_len) < 1:
            raise ValueError(f"BeamSettings: eval_len must be >= 1, got {self.eval_len}")
        if int(self.min_length) < 0:
            raise ValueError(f"BeamSettings: min_length must be >= 0, got {self.min_length}")
        if int(self.no_repeat_ngram_size) < 0:
            raise ValueError(f"BeamSettings: no_repeat_ngram_size must be >= 0, "
                             f"got {self.no_repeat_ngram_size}")
        if not float(self.repetition_penalty) > 0.0:
            raise ValueError(f"BeamSettings: repetition_penalty must be > 0, "
                             f"got {self.repetition_penalty}")
        if not self.eos_token_ids:
            raise ValueError("BeamSettings: eos_token_ids must name at least one token")
        if any(e < 0 for e in self.eos_token_ids):
            raise ValueError(f"BeamSettings: eos_token_ids must be >= 0, got {self.eos_token_ids}")

    def check_vocab(self, vocab_size: int):
        """Errors that depend on the model: eos ids inside the vocabulary, beam <= vocab."""
        bad = [e for e in self.eos_token_ids if e >= vocab_size]
        if bad:
            raise ValueError(f"eos_token_ids {bad} are outside the vocabulary (size {vocab_size})")
        if self.beam > vocab_size:
            raise ValueError(f"beam {self.beam} exceeds the vocabulary size {vocab_size}")


def add_beam_settings_args(parser):
    """The search flags of microsoft/LoRA's gpt2_beam.py (scripts/gpt2_beam.py and
    scripts/beam_divergence.py take the same ones)."""
    parser.add_argument("--eval_len", type=positive_int, default=256, help="tokens to generate")
    parser.add_argument("--min_length", type=non_negative_int, default=0,
                        help="no eos before this many tokens")
    parser.add_argument("--beam", type=positive_int, default=1, help="beam size")
    parser.add_argument("--length_penalty", type=finite_float, default=1.0)
    parser.add_argument("--no_repeat_ngram_size", type=non_negative_int, default=4)
    parser.add_argument("--repetition_penalty", type=positive_float, default=1.0)
    parser.add_argument("--eos_token_id", action="append", type=non_negative_int, default=[EOT_ID],
                        help="stop token(s); each use adds one to the default 50256")


def settings_from_args(args) -> BeamSettings:
    return BeamSettings(beam=args.beam, eval_len=args.eval_len, min_length=args.min_length,
                        length_penalty=args.length_penalty,
                        no_repeat_ngram_size=args.no_repeat_ngram_size,
                        repetition_penalty=args.repetition_penalty,
                        eos_token_ids=tuple(dict.fromkeys(args.eos_token_id)))


def padded_query_width(width: int, eval_len: int, n_positions: int, bucket: int = 64) -> int:
    """The device versions' query width: `width` rounded up to a multiple of `bucket`, within
    the model's positions. Not part of the search: padding after a query changes no logit
    (attention is causal and the cache masks keys past each row's length), but it makes batches
    share shapes, and Jittor on CUDA compiles its kernels anew for every new shape."""
    if width + eval_len > n_positions:
        raise ValueError(f"query width {width} + eval_len {eval_len} exceeds the model's "
                         f"{n_positions} positions")
    return min(-(-width // bucket) * bucket, n_positions - eval_len)


# ------------------------------------------------------------------------- per-step rules
def banned_ngram_tokens(history: Sequence[int], n: int) -> list:
    """Tokens that would complete an n-gram already in `history` after its last n-1 tokens
    (rule 2b; cur_len = len(history)). Sorted, without duplicates."""
    history = [int(x) for x in history]
    cur_len = len(history)
    if n <= 0 or cur_len + 1 < n:
        return []
    last = history[cur_len - n + 1:cur_len]
    banned = {history[j + n - 1] for j in range(cur_len - n + 1) if history[j:j + n - 1] == last}
    return sorted(banned)


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float):
    """CTRL penalty on one row's logits for every distinct generated token (rule 2b)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0:
        return out
    p = np.float32(penalty)
    for token in set(int(x) for x in history):
        out[token] = out[token] * p if out[token] < 0 else out[token] / p
    return out


def postprocess_logits(logits: np.ndarray, history: Sequence[int], settings: BeamSettings):
    """All three rules of 2b on one row; cur_len = len(history)."""
    out = apply_repetition_penalty(logits, history, settings.repetition_penalty)
    if len(history) < settings.min_length:
        out[list(settings.eos_token_ids)] = NEG_INF
    out[banned_ngram_tokens(history, settings.no_repeat_ngram_size)] = NEG_INF
    return out


def log_probabilities(logits: np.ndarray) -> np.ndarray:
    """float32 log(softmax(logits)) along the last axis (rule 2c)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    with np.errstate(divide="ignore"):
        return np.log(shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def top_k_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores: descending, equal scores by ascending index (rule 2e)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def length_divisor(length, length_penalty):
    """length ** length_penalty as float32 (the spec's divisor), held in a Python float. Dividing
    in float64 and rounding gives the correctly rounded float32 quotient on every device; a
    float32 division may be done as a multiplication by the reciprocal (Jittor, CUDA), 1 ulp off.
    """
    return float(np.float32(length ** length_penalty))


def candidate_score(beam_score, length: int, length_penalty: float) -> np.float32:
    """Rule 4's length-normalised score."""
    return np.float32(beam_score) / np.float32(length_divisor(length, length_penalty))


class BestCandidate:
    """One query's best finished sequence (rule 4)."""

    def __init__(self, eval_len: int, length_penalty: float):
        self.length_penalty = length_penalty
        self.score = None
        self.sequence = np.zeros(eval_len, dtype=np.int64)

    def offer(self, beam_score, history: Sequence[int]):
        score = candidate_score(beam_score, len(history), self.length_penalty)
        if self.score is None or score > self.score:
            self.score = score
            self.sequence[:] = 0
            self.sequence[:len(history)] = history


# ------------------------------------------------------------------------------ reference
def beam_search_reference(next_logits_fn: Callable, queries: Sequence[Sequence[int]],
                          settings: BeamSettings) -> np.ndarray:
    """Run the spec on each query; returns (len(queries), eval_len) int64.

    `next_logits_fn(prefixes)` takes a list of token-id lists and returns an (n, V) array: each
    prefix's logits for the token after it (a full forward, no cache). Here one call holds the
    rows of one query at one step, so all its prefixes have the same length.
    """
    out = np.zeros((len(queries), settings.eval_len), dtype=np.int64)
    for index, query in enumerate(queries):
        query = [int(x) for x in query]
        if not query:
            raise ValueError(f"query {index} is empty")
        out[index] = _search_one_query(next_logits_fn, query, settings)
    return out


def _search_one_query(next_logits_fn, query, settings):
    eos = set(settings.eos_token_ids)
    histories, scores = [[]], np.zeros(1, dtype=np.float32)  # rule 1
    best = BestCandidate(settings.eval_len, settings.length_penalty)
    for _step in range(settings.eval_len):
        logits = np.asarray(next_logits_fn([query + h for h in histories]), dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != len(histories):
            raise ValueError(f"next_logits_fn returned shape {logits.shape} for "
                             f"{len(histories)} prefixes; expected ({len(histories)}, V)")
        vocab_size = logits.shape[1]
        settings.check_vocab(vocab_size)
        logprobs = np.stack([log_probabilities(postprocess_logits(row, h, settings))
                             for row, h in zip(logits, histories)])
        flat = (scores[:, None] + logprobs).reshape(-1)  # flat index = row * V + token
        kept = top_k_order(flat, settings.beam)
        histories = [histories[i // vocab_size] + [int(i % vocab_size)] for i in kept]
        scores = flat[kept].astype(np.float32)
        for row, history in enumerate(histories):  # rule 2f
            if history[-1] in eos:
                best.offer(scores[row], history)
                scores[row] = NEG_INF
    for row, history in enumerate(histories):  # rule 3
        best.offer(scores[row], history)
    return best.sequence
