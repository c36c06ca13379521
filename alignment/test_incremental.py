"""Incremental decoding with a key/value cache gives the logits of the full forward pass.

(a) Concat mode, `past` without `len_past`: the cache holds exactly the tokens seen so far and
    grows by concatenation, fed one token at a time or in chunks.
(b) Preallocated mode, `past` with `len_past` (microsoft/LoRA's beam search): rows with
    different prompt lengths are right-padded, run through one forward, the cache is padded to
    a longer length, and every row then writes one token per step at its own position; each
    row's logits must equal that row's own unpadded full forward.
Both backends (torch through both attention paths); LoRA on with non-zero B.

Tolerances (fp32): measured on 2 CPU cores, cached logits differ from the full forward by at
most ~4e-7 abs (the same sums in another order); limits below leave ~10x.
"""
import numpy as np
import pytest
import torch

from alignment.harness import (DEVICES, build_jittor, build_torch, compare, jittor_on,
                               seeded_state, tiny_config, to_numpy)

ATOL, RTOL = 5e-6, 1e-4
CHUNKS = [3, 1, 4, 2, 1]  # chunk lengths of the chunked run (sum = LENGTH)
LENGTH = sum(CHUNKS)
PROMPT_LENGTHS = [3, 6, 1]  # rows of the preallocated-cache batch
DECODE_STEPS = 4
PAD_ID = 50256  # what fills the padded prompt positions (any id: they are masked or overwritten)
N_HEAD, HEAD_DIM = tiny_config().n_head, tiny_config().head_dim


def config_and_state():
    config = tiny_config(4)
    return config, seeded_state(config, seed=23)


class TorchRunner:
    """One backend behind one interface: `forward(ids, past, len_past) -> (logits, presents)`
    with numpy ids and positions, and the few cache operations the tests need."""

    def __init__(self, config, state, device, attention):
        self.model, self.device = build_torch(config, state, device, attention), device
        self.name = f"torch_{attention}"

    def forward(self, ids, past=None, len_past=None):
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        if len_past is not None:
            len_past = torch.as_tensor(np.asarray(len_past, dtype=np.int64), device=self.device)
        with torch.no_grad():
            return self.model(ids, past=past, len_past=len_past)

    def pad_cache(self, presents, length):
        """Each (B, H, S, D) tensor zero-padded along S to `length`."""
        return [tuple(torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[2])) for t in kv)
                for kv in presents]


class JittorRunner:
    def __init__(self, config, state):
        self.model, self.name = build_jittor(config, state), "jittor"

    def forward(self, ids, past=None, len_past=None):
        from jittor_impl.runtime import jt
        ids = jt.array(np.asarray(ids, dtype=np.int64))
        if len_past is not None:
            len_past = jt.array(np.asarray(len_past, dtype=np.int64))
        with jt.no_grad():
            return self.model(ids, past=past, len_past=len_past)

    def pad_cache(self, presents, length):
        from jittor_impl.runtime import jt
        return [tuple(jt.concat([t, jt.zeros((t.shape[0], t.shape[1], length - t.shape[2],
                                              t.shape[3]), dtype=t.dtype)], dim=2) for t in kv)
                for kv in presents]


def runners(device):
    """The three implementations under test; call inside `jittor_on(device)`."""
    config, state = config_and_state()
    return [TorchRunner(config, state, device, "math"), TorchRunner(config, state, device, "sdpa"),
            JittorRunner(config, state)]


def token_ids(shape, seed):
    return np.random.default_rng(seed).integers(0, 50257, size=shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["token_by_token", "chunks"])
def test_concat_cache_equals_full_forward(device, mode):
    ids = token_ids((2, LENGTH), seed=1)
    chunks = [1] * LENGTH if mode == "token_by_token" else CHUNKS
    with jittor_on(device):
        for runner in runners(device):
            full = to_numpy(runner.forward(ids)[0])
            past, start, pieces = None, 0, []
            for size in chunks:
                logits, past = runner.forward(ids[:, start:start + size], past=past)
                pieces.append(to_numpy(logits))
                start += size
                assert all(tuple(t.shape) == (2, N_HEAD, start, HEAD_DIM)
                           for kv in past for t in kv)
            compare(f"incremental_concat/{mode}/{runner.name}", np.concatenate(pieces, axis=1),
                    full, ATOL, RTOL, device)


@pytest.mark.parametrize("device", DEVICES)
def test_preallocated_cache_with_len_past(device):
    batch, longest = len(PROMPT_LENGTHS), max(PROMPT_LENGTHS)
    rows = [token_ids(n, seed=10 + i) for i, n in enumerate(PROMPT_LENGTHS)]
    padded = np.full((batch, longest), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    new_tokens = token_ids((batch, DECODE_STEPS), seed=99)
    cache_length = longest + DECODE_STEPS + 2  # longer than any row needs
    lengths = np.array(PROMPT_LENGTHS, dtype=np.int64)
    with jittor_on(device):
        for runner in runners(device):
            logits, presents = runner.forward(padded)
            prompt_logits = to_numpy(logits)
            past = runner.pad_cache(presents, cache_length)
            step_logits = []
            for step in range(DECODE_STEPS):
                logits, past = runner.forward(new_tokens[:, step:step + 1], past=past,
                                              len_past=lengths + step)
                assert tuple(logits.shape) == (batch, 1, 50257)
                assert all(tuple(t.shape) == (batch, N_HEAD, cache_length, HEAD_DIM)
                           for kv in past for t in kv)
                step_logits.append(to_numpy(logits)[:, 0])
            for i, row in enumerate(rows):
                own = np.concatenate([row, new_tokens[i]])[None, :]
                own_logits = to_numpy(runner.forward(own)[0])[0]
                n = len(row)
                compare(f"incremental_len_past/{runner.name}/row{i}_prompt",
                        prompt_logits[i, n - 1], own_logits[n - 1], ATOL, RTOL, device)
                compare(f"incremental_len_past/{runner.name}/row{i}_steps",
                        np.stack([s[i] for s in step_logits]), own_logits[n:], ATOL, RTOL, device)
