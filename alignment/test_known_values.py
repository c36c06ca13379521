"""Each backend against values derived independently of both, not only against each other.

A plain numpy GPT-2 (float64), written here from the reference's formulas rather than from
either backend: tanh-approximate GELU, LayerNorm with eps 1e-5, Conv1D weights stored (in, out),
attention scores scaled by 1/sqrt(head_dim) with the causal mask applied as
`w * b - 1e10 * (1 - b)`, the output head tied to `wte`, loralib's `MergedLinear` with
`enable_lora=[True, False, True]`, `fan_in_fan_out=True` and scaling alpha/r (its grouped conv1d
and zero_pad spelled out), and microsoft/LoRA's label-smoothed masked loss
`sum(loss * mask) / (sum(mask) + 1e-4)` with `ignore_index=-1`. Plus closed forms: all-zero
weights give uniform logits and a loss of log(50257); LoRA with B = 0 is the plain model;
merging LoRA changes no output and unmerging restores the weights; the init bound of lora_A;
the model cards' shapes and parameter counts (Hugging Face's published counts).

Tolerances: fp32 backends against the float64 reference, measured on 2 CPU cores: logits
within ~4e-7 abs (values up to ~0.6), loss within ~8e-7; the limits leave 10x or more.
"""
import math

import numpy as np
import pytest
import torch

from alignment.harness import (DEVICES, build_jittor, build_torch, compare, jittor_forward,
                               jittor_on, seeded_state, tiny_config, to_numpy, torch_forward)
from shared.model.config import GPT2Config
from shared.model.params import init_state_dict, parameter_shapes

LOGITS_ATOL, LOGITS_RTOL = 5e-6, 1e-4
LOSS_ATOL, LOSS_RTOL = 2e-5, 1e-5
ENABLE_LORA = (True, False, True)  # microsoft/LoRA: LoRA on the query and value projections


# ------------------------------------------------------------ the reference, in plain numpy
def np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return weight * (x - mean) / np.sqrt(var + eps) + bias


def np_conv1d(x, weight, bias):
    """GPT-2's Conv1D: weight stored (in, out)."""
    return x @ weight + bias


def np_lora_merged_linear(x, weight, bias, lora_A, lora_B, r, alpha):
    """loralib.MergedLinear.forward with fan_in_fan_out=True and enable_lora=ENABLE_LORA:
    `after_A = x A^T`; `after_B = conv1d(after_A, B.unsqueeze(-1), groups=sum(enable_lora))`;
    `zero_pad` scatters after_B into the enabled thirds of the output; times alpha / r."""
    result = np_conv1d(x, weight, bias)
    if r == 0:
        return result
    groups = sum(ENABLE_LORA)
    per_part = weight.shape[1] // len(ENABLE_LORA)
    after_a = x @ lora_A.T
    after_b = np.concatenate([after_a[..., g * r:(g + 1) * r]
                              @ lora_B[g * per_part:(g + 1) * per_part].T
                              for g in range(groups)], axis=-1)
    lora_ind = np.repeat(ENABLE_LORA, per_part)
    padded = np.zeros(result.shape)
    padded[..., lora_ind] = after_b
    return result + padded * (alpha / r)


def np_attention(x, p, config):
    batch, length, embd = x.shape
    heads, dim = config.n_head, embd // config.n_head
    qkv = np_lora_merged_linear(x, p["attn.c_attn.weight"], p["attn.c_attn.bias"],
                                p.get("attn.c_attn.lora_A"), p.get("attn.c_attn.lora_B"),
                                config.lora_attn_dim, config.lora_attn_alpha)
    q, k, v = (qkv[..., i * embd:(i + 1) * embd].reshape(batch, length, heads, dim)
               .transpose(0, 2, 1, 3) for i in range(3))
    w = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim)
    b = np.tril(np.ones((length, length)))
    w = w * b - 1e10 * (1 - b)
    w = np.exp(w - w.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    a = (w @ v).transpose(0, 2, 1, 3).reshape(batch, length, embd)
    return np_conv1d(a, p["attn.c_proj.weight"], p["attn.c_proj.bias"])


def np_gpt2_logits(state, config, ids):
    s = {k: v.astype(np.float64) for k, v in state.items()}
    h = s["transformer.wte.weight"][ids] + s["transformer.wpe.weight"][np.arange(ids.shape[1])]
    for i in range(config.n_layer):
        prefix = f"transformer.h.{i}."
        p = {k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)}
        h = h + np_attention(np_layer_norm(h, p["ln_1.weight"], p["ln_1.bias"]), p, config)
        m = np_gelu(np_conv1d(np_layer_norm(h, p["ln_2.weight"], p["ln_2.bias"]),
                              p["mlp.c_fc.weight"], p["mlp.c_fc.bias"]))
        h = h + np_conv1d(m, p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])
    h = np_layer_norm(h, s["transformer.ln_f.weight"], s["transformer.ln_f.bias"])
    return h @ s["transformer.wte.weight"].T


def np_lm_loss(logits, labels, mask, label_smooth):
    logits = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logprobs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    flat = labels.reshape(-1)
    nll = np.where(flat == -1, 0.0, -logprobs[np.arange(len(flat)), np.maximum(flat, 0)])
    if label_smooth > 0.0001:
        loss = (1.0 - label_smooth) * nll - label_smooth * logprobs.mean(-1)
    else:
        loss = nll
    mask = np.ones(labels.shape) if mask is None else mask.astype(np.float64)
    return (loss.reshape(labels.shape) * mask).sum() / (mask.sum() + 0.0001)


def case(lora_dim, label_smooth):
    """Inputs with a zero mask row; with label smoothing 0 also ignored (-1) labels."""
    rng = np.random.default_rng(lora_dim * 10 + int(label_smooth * 10))
    ids = rng.integers(0, 50257, size=(3, 6))
    labels = rng.integers(0, 50257, size=(3, 6))
    mask = (rng.random((3, 6)) > 0.3).astype(np.float32)
    mask[0, 0], mask[1] = 1.0, 0.0
    if label_smooth == 0.0:
        labels[0, :2] = -1
    return ids, labels, mask


# ------------------------------------------------------------------ backends vs the reference
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora_dim", [0, 4])
@pytest.mark.parametrize("label_smooth", [0.0, 0.1])
def test_backends_equal_numpy_reference(device, lora_dim, label_smooth):
    config = tiny_config(lora_dim)
    state = seeded_state(config, seed=3)
    ids, labels, mask = case(lora_dim, label_smooth)
    ref_logits = np_gpt2_logits(state, config, ids)
    ref_loss = np_lm_loss(ref_logits, labels, mask, label_smooth)
    results = {}
    with jittor_on(device):
        results["jittor"] = jittor_forward(build_jittor(config, state), ids, labels, mask,
                                           label_smooth)
    for attention in ("math", "sdpa"):
        results[f"torch_{attention}"] = torch_forward(build_torch(config, state, device, attention),
                                                      ids, device, labels, mask, label_smooth)
    for backend, (logits, loss) in results.items():
        name = f"{backend}/lora{lora_dim}/ls{label_smooth}"
        compare(f"numpy_ref_logits/{name}", logits, ref_logits, LOGITS_ATOL, LOGITS_RTOL, device)
        compare(f"numpy_ref_loss/{name}", loss.reshape(()), ref_loss, LOSS_ATOL, LOSS_RTOL, device)


def test_numpy_reference_is_not_degenerate():
    """The reference itself responds to what it models: LoRA and the causal mask matter."""
    config = tiny_config(4)
    state = seeded_state(config, seed=3)
    ids = np.random.default_rng(0).integers(0, 50257, size=(1, 6))
    with_lora = np_gpt2_logits(state, config, ids)
    without = np_gpt2_logits({k: v for k, v in state.items() if "lora" not in k},
                             tiny_config(0), ids)
    assert np.abs(with_lora - without).max() > 1e-3
    changed = ids.copy()
    changed[0, -1] = (ids[0, -1] + 1) % 50257
    # Changing the last token leaves earlier positions alone (causality) but moves the last.
    moved = np_gpt2_logits(state, config, changed)
    assert np.array_equal(moved[0, :-1], with_lora[0, :-1])
    assert np.abs(moved[0, -1] - with_lora[0, -1]).max() > 1e-3


# ------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_smooth", [0.0, 0.1])
def test_zero_weights_give_uniform_logits_and_log_vocab_loss(device, label_smooth):
    config = tiny_config(4)
    zeros = {k: np.zeros_like(v) for k, v in init_state_dict(config, 0).items()}
    ids, labels, _ = case(4, 0.1)
    mask = np.array([[1, 1, 0, 1, 0, 0], [0] * 6, [1, 0, 1, 1, 1, 1]], dtype=np.float32)
    s = float(mask.sum())
    expected = math.log(50257) * s / (s + 0.0001)
    with jittor_on(device):
        results = {"jittor": jittor_forward(build_jittor(config, zeros), ids, labels, mask,
                                            label_smooth)}
    results["torch"] = torch_forward(build_torch(config, zeros, device), ids, device, labels,
                                     mask, label_smooth)
    for backend, (logits, loss) in results.items():
        assert not np.any(logits), f"{backend}: logits of an all-zero model should be 0"
        compare(f"closed_form_log_vocab/{backend}/ls{label_smooth}", loss.reshape(()), expected,
                2e-6, 0.0, device)


@pytest.mark.parametrize("device", DEVICES)
def test_lora_with_zero_B_equals_plain_model(device):
    """At its initialisation (B = 0) LoRA adds exactly nothing; both configs draw the same base
    weights for one seed."""
    ids = np.random.default_rng(4).integers(0, 50257, size=(2, 7))
    plain, with_lora = tiny_config(0), tiny_config(4)
    plain_state = seeded_state(plain, seed=8)
    lora_state = seeded_state(with_lora, seed=8, lora_nonzero=False)
    assert all(np.array_equal(plain_state[k], lora_state[k]) for k in plain_state)
    with jittor_on(device):
        j_plain = jittor_forward(build_jittor(plain, plain_state), ids)[0]
        j_lora = jittor_forward(build_jittor(with_lora, lora_state), ids)[0]
    t_plain = torch_forward(build_torch(plain, plain_state, device), ids, device)[0]
    t_lora = torch_forward(build_torch(with_lora, lora_state, device), ids, device)[0]
    compare("lora_B0_equals_plain/jittor", j_lora, j_plain, 0.0, 0.0, device)
    compare("lora_B0_equals_plain/torch", t_lora, t_plain, 0.0, 0.0, device)


def np_delta_weight(lora_A, lora_B, r, alpha, out_features):
    """loralib's merge: `zero_pad(conv1d(A.unsqueeze(0), B.unsqueeze(-1), groups=2))`, transposed
    to the (in, out) storage of fan_in_fan_out, times alpha / r."""
    per_part = out_features // len(ENABLE_LORA)
    parts = [lora_B[g * per_part:(g + 1) * per_part] @ lora_A[g * r:(g + 1) * r] for g in range(2)]
    full = np.zeros((out_features, lora_A.shape[1]))
    full[np.repeat(ENABLE_LORA, per_part)] = np.concatenate(parts, axis=0)
    return full.T * (alpha / r)


@pytest.mark.parametrize("device", DEVICES)
def test_merge_and_unmerge_lora(device):
    from jittor_impl import lora as jittor_lora
    from torch_impl import lora as torch_lora
    config = tiny_config(4)
    state = seeded_state(config, seed=9)
    ids = np.random.default_rng(6).integers(0, 50257, size=(2, 5))
    key = "transformer.h.1.attn.c_attn."
    merged_expected = state[key + "weight"].astype(np.float64) + np_delta_weight(
        state[key + "lora_A"].astype(np.float64), state[key + "lora_B"].astype(np.float64),
        config.lora_attn_dim, config.lora_attn_alpha, 3 * config.n_embd)
    with jittor_on(device):
        j_model = build_jittor(config, state)
        cases = [("jittor", j_model, jittor_lora, lambda ids: jittor_forward(j_model, ids)[0],
                  lambda: j_model.transformer.h[1].attn.c_attn.weight)]
        t_model = build_torch(config, state, device)
        cases.append(("torch", t_model, torch_lora,
                      lambda ids: torch_forward(t_model, ids, device)[0],
                      lambda: t_model.transformer.h[1].attn.c_attn.weight))
        for backend, model, lora, run, weight in cases:
            before = run(ids)
            lora.merge_lora(model)
            assert all(layer.merged for layer in lora.lora_layers(model))
            compare(f"merge_weight/{backend}", to_numpy(weight()), merged_expected, 1e-6, 1e-5,
                    device)
            compare(f"merge_logits/{backend}", run(ids), before, LOGITS_ATOL, LOGITS_RTOL, device)
            saved = model.state_dict_numpy()  # reports the unmerged weights while merged
            compare(f"merge_state_dict/{backend}", saved[key + "weight"], state[key + "weight"],
                    1e-7, 0.0, device)
            lora.merge_lora(model)  # merging twice must not add the update twice
            compare(f"merge_idempotent/{backend}", to_numpy(weight()), merged_expected, 1e-6, 1e-5,
                    device)
            lora.unmerge_lora(model)
            assert not any(layer.merged for layer in lora.lora_layers(model))
            restored = model.state_dict_numpy()
            for name in state:
                compare(f"unmerge_restores/{backend}", restored[name], state[name], 1e-7, 0.0,
                        device)
            compare(f"unmerge_logits/{backend}", run(ids), before, LOGITS_ATOL, LOGITS_RTOL, device)


def test_lora_A_init_bound():
    """lora_A ~ U(-1/sqrt(n_embd), 1/sqrt(n_embd)): loralib's kaiming_uniform_(a=sqrt(5)), whose
    bound gain * sqrt(3 / fan_in) torch computes for us here; lora_B starts at 0."""
    config = tiny_config(4)
    state = init_state_dict(config, seed=0)
    probe = torch.empty(2 * config.lora_attn_dim, config.n_embd)
    fan_in = torch.nn.init._calculate_fan_in_and_fan_out(probe)[0]
    gain = torch.nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    torch_bound = gain * math.sqrt(3.0 / fan_in)
    assert torch_bound == pytest.approx(1.0 / math.sqrt(config.n_embd), rel=1e-12)
    for name in (n for n in state if n.endswith("lora_A")):
        values = state[name]
        assert values.shape == (2 * config.lora_attn_dim, config.n_embd)
        assert np.abs(values).max() <= torch_bound
        assert np.abs(values).max() > 0.95 * torch_bound  # uniform over the whole range
        assert abs(float(values.mean())) < 0.1 * torch_bound
    assert all(not np.any(state[n]) for n in state if n.endswith("lora_B"))


HF_PARAMETER_COUNTS = {"gpt2.sm": 124_439_808, "gpt2.md": 354_823_168, "gpt2.lg": 774_030_080}


@pytest.mark.parametrize("card,shape", [("gpt2.sm", (768, 12, 12)), ("gpt2.md", (1024, 24, 16)),
                                        ("gpt2.lg", (1280, 36, 20))])
def test_model_cards(card, shape):
    """Shapes of microsoft/LoRA's cards and the parameter counts Hugging Face publishes for
    gpt2 / gpt2-medium / gpt2-large (the tied head counted once)."""
    config = GPT2Config.from_model_card(card)
    assert (config.n_embd, config.n_layer, config.n_head) == shape
    assert config.head_dim == 64 and config.vocab_size == 50257 and config.n_positions == 1024
    count = sum(math.prod(s) for s in parameter_shapes(config).values())
    assert count == HF_PARAMETER_COUNTS[card]
    e = config.n_embd  # the same count from the formula: embeddings + 12e^2 + 13e per layer + ln_f
    assert count == 50257 * e + 1024 * e + config.n_layer * (12 * e * e + 13 * e) + 2 * e


def test_lora_parameter_count():
    """r=4 on gpt2.md: 24 layers x (A: 2*4 x 1024 + B: 2*1024 x 4) = 393,216 (0.11% of the base)."""
    config = GPT2Config.from_model_card("gpt2.md", lora_attn_dim=4)
    lora = {n: s for n, s in parameter_shapes(config).items() if "lora_" in n}
    assert sum(math.prod(s) for s in lora.values()) == 393_216 == 24 * (2 * 4 * 1024 + 2 * 1024 * 4)
    assert len(lora) == 48
    from torch_impl.lora import MergedLinear
    assert MergedLinear(1024, 3 * 1024, r=4, lora_alpha=128).scaling == 128 / 4


@pytest.mark.parametrize("lora_dim", [0, 4])
def test_backends_hold_exactly_the_canonical_parameters(lora_dim):
    """Both models' parameters are `parameter_shapes` (so the counts above are theirs)."""
    config = tiny_config(lora_dim)
    expected = dict(parameter_shapes(config))
    state = init_state_dict(config, 0)
    t_model = build_torch(config, state)
    j_model = build_jittor(config, state)
    assert {n: tuple(p.shape) for n, p in t_model.named_parameters()} == expected
    assert {n: tuple(p.shape) for n, p in j_model.named_parameters()} == expected
