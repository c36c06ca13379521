"""Forward pass: the Jittor twin computes what the torch model computes, through both of torch's
attention paths ("math" is the reference's formula, "sdpa" the fused kernel), with and without
LoRA, on logits, loss (label smoothing, masks) and the returned key/value cache.

Tolerances (fp32). Measured on 2 CPU cores: logits and cached keys/values differ by at most
~5e-7 / ~1.5e-6 abs (logits up to ~0.6), losses (~10.8) by ~2e-6. The limits below leave a
margin of 3-10x and still catch any real difference in the computation (a wrong mask, scale
or LoRA term moves logits by 1e-3 or more). Not yet measured on CUDA.
"""
import functools

import numpy as np
import pytest

from alignment.harness import (DEVICES, build_jittor, build_torch, compare, jittor_forward,
                               jittor_on, seeded_state, tiny_config, torch_forward)

LOGITS_ATOL, LOGITS_RTOL = 5e-6, 1e-4
LOSS_ATOL, LOSS_RTOL = 1e-5, 1e-5
SHAPES = [(1, 1), (1, 7), (1, 33), (3, 1), (3, 7), (3, 33)]
SEED = 11


@functools.lru_cache(maxsize=None)
def weights(lora_dim):
    config = tiny_config(lora_dim)
    return config, seeded_state(config, SEED)


def token_ids(batch, length, seed):
    """Random GPT-2 token ids that include the first and the last id of the vocabulary."""
    ids = np.random.default_rng(seed).integers(0, 50257, size=(batch, length))
    ids.flat[0], ids.flat[-1] = 50256, 0
    return ids


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora_dim", [0, 4])
@pytest.mark.parametrize("batch,length", SHAPES, ids=[f"B{b}xT{t}" for b, t in SHAPES])
def test_logits_match(device, lora_dim, batch, length):
    config, state = weights(lora_dim)
    ids = token_ids(batch, length, seed=batch * 100 + length)
    with jittor_on(device):
        j_logits, _ = jittor_forward(build_jittor(config, state), ids)
    assert j_logits.shape == (batch, length, config.vocab_size)
    for attention in ("math", "sdpa"):
        t_logits, _ = torch_forward(build_torch(config, state, device, attention), ids, device)
        compare(f"logits/{attention}/lora{lora_dim}/B{batch}xT{length}", j_logits, t_logits,
                LOGITS_ATOL, LOGITS_RTOL, device)


@pytest.mark.parametrize("device", DEVICES)
def test_lora_path_changes_logits(device):
    """The LoRA weights of these tests are non-zero, so the comparisons above exercise them."""
    ids = token_ids(2, 5, seed=3)
    base_config, base_state = weights(0)
    lora_config, lora_state = weights(4)
    with jittor_on(device):
        base, _ = jittor_forward(build_jittor(base_config, base_state), ids)
        with_lora, _ = jittor_forward(build_jittor(lora_config, lora_state), ids)
    assert np.abs(with_lora - base).max() > 1e-3


def loss_mask(kind, batch, length):
    if kind == "none":
        return None
    mask = (np.random.default_rng(5).random((batch, length)) > 0.3).astype(np.float32)
    mask[0, -1] = 1.0
    mask[1] = 0.0  # a row that contributes nothing (a padded example)
    return mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora_dim", [0, 4])
@pytest.mark.parametrize("label_smooth", [0.0, 0.1])
@pytest.mark.parametrize("mask_kind", ["none", "with_zero_row"])
def test_loss_matches(device, lora_dim, label_smooth, mask_kind):
    config, state = weights(lora_dim)
    batch, length = 3, 7
    ids = token_ids(batch, length, seed=21)
    labels = token_ids(batch, length, seed=22)
    mask = loss_mask(mask_kind, batch, length)
    with jittor_on(device):
        j_logits, j_loss = jittor_forward(build_jittor(config, state), ids, labels, mask,
                                          label_smooth)
    assert j_loss.shape in ((), (1,)), f"loss should be a scalar, got shape {j_loss.shape}"
    name = f"lora{lora_dim}/ls{label_smooth}/mask_{mask_kind}"
    for attention in ("math", "sdpa"):
        t_logits, t_loss = torch_forward(build_torch(config, state, device, attention), ids,
                                         device, labels, mask, label_smooth)
        compare(f"loss/{attention}/{name}", j_loss.reshape(()), t_loss, LOSS_ATOL, LOSS_RTOL,
                device)
        compare(f"logits_with_labels/{attention}/{name}", j_logits, t_logits, LOGITS_ATOL,
                LOGITS_RTOL, device)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_mask_row_does_not_change_loss(device):
    """Dropping a fully masked row from the batch leaves the loss as it was (both backends)."""
    config, state = weights(4)
    ids, labels = token_ids(3, 7, seed=31), token_ids(3, 7, seed=32)
    mask = loss_mask("with_zero_row", 3, 7)
    keep = [0, 2]
    with jittor_on(device):
        model = build_jittor(config, state)
        _, full = jittor_forward(model, ids, labels, mask, 0.1)
        _, kept = jittor_forward(model, ids[keep], labels[keep], mask[keep], 0.1)
    compare("loss_zero_row/jittor", full.reshape(()), kept.reshape(()), LOSS_ATOL, LOSS_RTOL,
            device)
    model = build_torch(config, state, device)
    _, full = torch_forward(model, ids, device, labels, mask, 0.1)
    _, kept = torch_forward(model, ids[keep], device, labels[keep], mask[keep], 0.1)
    compare("loss_zero_row/torch", full, kept, LOSS_ATOL, LOSS_RTOL, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora_dim", [0, 4])
def test_presents_match(device, lora_dim):
    """`presents` is a list of n_layer (key, value) pairs shaped (B, H, T, D), equal across
    backends."""
    config, state = weights(lora_dim)
    batch, length = 3, 7
    ids = token_ids(batch, length, seed=41)
    expected = (batch, config.n_head, length, config.head_dim)
    with jittor_on(device):
        _, j_presents = jittor_forward(build_jittor(config, state), ids)
    for attention in ("math", "sdpa"):
        _, t_presents = torch_forward(build_torch(config, state, device, attention), ids, device)
        for presents in (j_presents, t_presents):
            assert len(presents) == config.n_layer
            assert all(len(kv) == 2 for kv in presents)
            assert all(t.shape == expected for kv in presents for t in kv), \
                [t.shape for kv in presents for t in kv]
        for layer, (j_kv, t_kv) in enumerate(zip(j_presents, t_presents)):
            for part, j, t in zip(("key", "value"), j_kv, t_kv):
                compare(f"presents/{attention}/lora{lora_dim}/layer{layer}/{part}", j, t,
                        LOGITS_ATOL, LOGITS_RTOL, device)
