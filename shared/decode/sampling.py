"""Sampling for interactive generation, in numpy, so both backends draw the same text.

A backend only supplies next-token logits (its KV cache stays on its device); temperature,
top-k / top-p filtering and the draw happen here, from one numpy generator per sample seeded by
(seed, sample index). Sample i is therefore the same whatever `num_samples` is, and the same
for torch and jittor given the same weights, unless their logits differ right at a filtering
boundary or the uniform draw lands within float noise of a cumulative-probability edge.

Rules per step, for one row of logits (float64 from here on):
  temperature 0: greedy (the first maximal token);
  else logits / temperature; top_k > 0 keeps the k largest (ties broken by lower token id);
  top_p < 1 keeps the smallest set of most probable tokens whose probability reaches top_p
  (the most probable token always stays); the draw is the inverse CDF at u ~ U[0, 1).
A sample stops after it draws eos_token_id (not included in its tokens) or max_new_tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EOT_ID = 50256


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    max_new_tokens: int = 64
    eos_token_id: int = EOT_ID

    def __post_init__(self):
        # NaN fails every comparison: `nan <= 0` is false, and NaN probabilities draw eos
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), "
                             f"got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:  # false for NaN too
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def filtered_probabilities(logits, settings: SamplingSettings) -> np.ndarray:
    """The distribution one row's next token is drawn from (float64, sums to 1)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 1:
        raise ValueError(f"expected one row of logits, got shape {logits.shape}")
    probs = np.zeros_like(logits)
    if settings.temperature == 0:
        probs[int(np.argmax(logits))] = 1.0
        return probs
    order = np.argsort(-logits, kind="stable")  # most probable first, lower id on ties
    if settings.top_k > 0:
        order = order[:settings.top_k]
    kept = logits[order] / settings.temperature
    kept = np.exp(kept - kept.max())
    kept /= kept.sum()
    if settings.top_p < 1.0:
        before = np.cumsum(kept) - kept  # probability of the more probable tokens
        keep = before < settings.top_p
        order, kept = order[keep], kept[keep] / kept[keep].sum()
    probs[order] = kept
    return probs


def draw(rng: np.random.Generator, probs: np.ndarray) -> int:
    """Inverse-CDF draw of one token id from `probs`."""
    cdf = np.cumsum(probs)
    token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(token, len(probs) - 1)


def prompt_batch(prompt_ids, settings: SamplingSettings, n_positions: int,
                 num_samples: int) -> np.ndarray:
    """The prompt repeated once per sample, (num_samples, T) int64: the first input of a run.

    Checked here so both backends refuse the same prompts with the same words.
    """
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(1, -1)
    if prompt.shape[1] == 0:
        raise ValueError("the prompt is empty: give at least one token")
    if prompt.shape[1] + settings.max_new_tokens - 1 > n_positions:
        raise ValueError(f"prompt of {prompt.shape[1]} tokens + max_new_tokens "
                         f"{settings.max_new_tokens} exceeds the model's "
                         f"{n_positions} positions")
    return np.repeat(prompt, num_samples, axis=0)


class SampleStreams:
    """`num_samples` samples advanced together; the backend feeds logits, gets next tokens."""

    def __init__(self, settings: SamplingSettings, seed: int, num_samples: int, on_token=None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.settings = settings
        self.generators = [np.random.default_rng([int(seed), i]) for i in range(num_samples)]
        self.tokens = [[] for _ in range(num_samples)]
        self.finished = [False] * num_samples
        self.on_token = on_token  # called as on_token(row, token) for each kept token (chat)

    @property
    def done(self) -> bool:
        return all(self.finished)

    def step(self, logits) -> np.ndarray:
        """Draw each unfinished sample's next token from its row of `logits` (num_samples, V);
        returns the tokens to feed next (finished rows repeat eos, which nobody reads)."""
        logits = np.asarray(logits)
        if logits.shape[0] != len(self.tokens):
            raise ValueError(f"got logits for {logits.shape[0]} rows, expected "
                             f"{len(self.tokens)}")
        feed = np.full(len(self.tokens), self.settings.eos_token_id, dtype=np.int64)
        for row, rng in enumerate(self.generators):
            if self.finished[row]:
                continue
            token = draw(rng, filtered_probabilities(logits[row], self.settings))
            if token == self.settings.eos_token_id:
                self.finished[row] = True
            else:
                self.tokens[row].append(token)
                feed[row] = token
                if self.on_token is not None:
                    self.on_token(row, token)
                self.finished[row] = len(self.tokens[row]) >= self.settings.max_new_tokens
        return feed
