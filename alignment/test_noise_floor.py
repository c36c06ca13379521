"""The noise-floor rule's k, measured: Jittor's error against a float64 reference (the torch twin
in float64) relative to torch fp32's own error, over seeds and every tensor of a tiny GPT-2 that
alignment.auto_diff records end to end (as scripts/diff_layers.py calls it). Asserts that the measured worst ratio stays below the k that alignment/compare.py uses
(with a margin, so k is not fitted to the last decimal) and prints the distribution.

bf16: on the CPU, Jittor's bf16 products were ~95x less accurate than torch's CPU autocast (median ratio)
(measured, see alignment/compare.py), so the bf16 measurement runs on CUDA only (marked gpu).
"""
import numpy as np
import pytest

from alignment import auto_diff
from alignment.compare import FLOORS, K_BF16, K_FP32, KINDS
from alignment.gpt2_trace import auto_diff_case, random_batch
from alignment.harness import jittor_on, seeded_state, tiny_config
from alignment.model_trace import module_of

SEEDS = (0, 1, 2)
# What issue 13 asks the trace to hold, per Block and at the root (module names as in checkpoints)
BLOCK_MODULES = ("", ".ln_1", ".ln_2", ".attn", ".attn.c_attn", ".attn.c_attn.lora_delta", ".mlp")
ROOT_MODULES = ("lm_head", "loss")
MEASURED_KINDS = ("outputs", "output_grads")  # each required module is compared in both


def required_modules(config) -> list:
    return [f"transformer.h.{i}{suffix}" for i in range(config.n_layer)
            for suffix in BLOCK_MODULES] + list(ROOT_MODULES)


def ratios(precision, device, seeds=SEEDS):
    """err(jittor)/err(torch) of every tensor whose torch error is above the floor, pooled; the
    modules missing from a trace; the (seed, module, kind) of required modules compared against
    float64."""
    floor = FLOORS["bfloat16" if precision == "bf16" else "float32"]
    out, failing, missing, measured = [], [], set(), set()
    for seed in seeds:
        config = tiny_config(lora_dim=4)
        tm, jm, inputs, options = auto_diff_case(
            config, seeded_state(config, seed), random_batch(config, seed=seed, vocab=2000),
            precision=precision, device=device)
        result = auto_diff(tm, jm, inputs, **options)
        required = required_modules(config)
        missing |= set(required) - set(result.forward_order)
        failing += [r["name"] for r in result.failing()]
        above = [r for r in result.records if r["kind"] in KINDS
                 and r["err_base"] is not None and r["err_base"] > floor]
        out += [r["err_test"] / r["err_base"] for r in above]
        measured |= {(seed, module_of(r["name"]), r["kind"]) for r in result.records
                     if module_of(r["name"]) in required and r["kind"] in MEASURED_KINDS
                     and r["err_base"] is not None}
    return np.array(out), failing, sorted(missing), measured


def report(precision, device, r, k):
    print(f"\nnoise floor {precision} on {device}: {len(r)} tensors, jittor/torch error vs float64: "
          f"median {np.median(r):.2f}, p99 {np.percentile(r, 99):.2f}, max {r.max():.2f} (k = {k})")


def test_fp32_k_covers_the_measured_ratios_with_margin():
    r, failing, missing, measured = ratios("fp32", "cpu")
    report("fp32", "cpu", r, K_FP32)
    assert not missing, f"modules issue 13 requires are not traced: {missing}"
    # every required module's output and output gradient is compared against float64 in every
    # seed: seeds x (layers x traced Block modules + root outputs) x 2, from the model, not a
    # literal; the ratios (tensors whose torch error is above the floor, inputs and parameter
    # gradients included) must be at least as many
    expected = len(SEEDS) * len(required_modules(tiny_config(lora_dim=4))) * len(MEASURED_KINDS)
    assert len(measured) == expected, f"{len(measured)} of {expected} (module, kind) compared"
    assert len(r) >= expected, f"only {len(r)} ratios above the floor for {expected} slots"
    assert not failing, failing
    assert r.max() <= K_FP32 / 2, f"worst ratio {r.max():.2f}: k={K_FP32} has less than 2x margin"
    assert np.median(r) < 2.0  # Jittor is about as accurate as torch, not systematically worse


@pytest.mark.gpu
def test_bf16_on_cuda_within_k():
    import torch
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    with jittor_on("cuda"):
        r, failing, missing, _ = ratios("bf16", "cuda")
    report("bf16", "cuda", r, K_BF16)
    assert not missing, missing
    assert not failing, failing
    assert r.max() <= K_BF16
