"""alignment.trace on two pairs of twins (GPT-2 + LoRA, and a small MLP with LayerNorm), and the
localization rule of alignment.compare on hand-made pass/fail patterns."""
import numpy as np
import pytest

from alignment import mlp_twins
from alignment.compare import check_tensor, compare_traces, localize
from alignment.gpt2_trace import random_batch, trace_gpt2
from alignment.harness import seeded_state, tiny_config
from alignment.trace import trace_module, trace_pair


@pytest.fixture(scope="module")
def gpt2_traces():
    config = tiny_config(lora_dim=4)
    return config, trace_gpt2(config, seeded_state(config, 0), random_batch(config, vocab=2000))


def test_gpt2_trace_records_every_submodule(gpt2_traces):
    config, traces = gpt2_traces
    t, j = traces["torch"], traces["jittor"]
    assert t.order == j.order
    for i in range(config.n_layer):
        for part in ("", ".ln_1", ".ln_2", ".attn", ".attn.c_attn", ".attn.c_attn.lora_delta",
                     ".mlp", ".mlp.c_fc", ".mlp.c_proj"):
            assert f"transformer.h.{i}{part}" in t.outputs
    assert t.order[-2:] == ["lm_head", "loss"]
    assert t.outputs["lm_head"].shape == (2, 16, config.vocab_size)
    # gradients w.r.t. every float output and every parameter, in both backends
    for trace in (t, j):
        assert set(trace.output_grads) == {n for n in trace.outputs}
        assert len(trace.param_grads) == 2 + 14 * config.n_layer + 2  # wte, wpe; per block; ln_f
        assert all(np.abs(g).sum() > 0 for g in trace.param_grads.values())
    # the head's gradient is d loss / d logits: rows of a masked position are zero
    assert np.abs(t.output_grads["lm_head"][-1, -1]).max() == 0.0


def test_gpt2_twins_agree_within_the_noise_floor(gpt2_traces):
    _, traces = gpt2_traces
    result = compare_traces(traces["jittor"], traces["torch"], traces["float64"])
    assert result.passed(), [r["name"] for r in result.failing()]
    assert result.first_divergence == {"forward": None, "backward": None}
    # torch's own fp32 error is the yardstick: small but not zero past the embeddings
    errs = [r["err_base"] for r in result.records if r["kind"] == "outputs"]
    assert 0 < max(errs) < 1e-5


def test_mlp_twins_trace_and_compare():
    state = mlp_twins.init_state(0)
    inputs = mlp_twins.batch(0)
    kw = dict(root_outputs=("logits", "loss"))
    t, j = trace_pair(mlp_twins.torch_mlp(state), mlp_twins.jittor_mlp(state), inputs,
                      mlp_twins.call, **kw)
    ref = trace_module("torch", mlp_twins.torch_mlp(state, "float64"), inputs, mlp_twins.call,
                       dtype="float64", **kw)
    assert t.order == j.order == ["norm", "fc1", "act", "fc2", "logits", "loss"]
    assert sorted(t.param_grads) == sorted(j.param_grads) == sorted(state)
    result = compare_traces(j, t, ref)
    assert result.passed(), [r["name"] for r in result.failing()]
    # a planted difference in the Jittor twin (LayerNorm eps 1e-5 -> 1e-3) is found at `norm`
    jm = mlp_twins.jittor_mlp(state)
    jm.norm.eps = 1e-3
    bad = compare_traces(trace_module("jittor", jm, inputs, mlp_twins.call, **kw), t, ref)
    assert bad.first_divergence["forward"] == "norm"


def test_check_tensor_rules():
    base = np.linspace(1, 2, 50)
    ref = base + 1e-7
    assert check_tensor("x", base + 2e-7, base, ref)["passed"]
    assert not check_tensor("x", base * (1 + 1e-4), base, ref)["passed"]
    assert not check_tensor("x", None, base)["passed"]
    assert not check_tensor("x", base[:-1], base)["passed"]
    assert not check_tensor("x", base * np.nan, base)["passed"]
    r = check_tensor("x", -base, base)
    assert r["cosine"] == pytest.approx(-1.0) and not r["passed"]


def test_localize_prefers_the_deepest_module_whose_input_agrees():
    order = ["h.0.ln_1", "h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.attn", "h.0", "head"]
    # a bug between c_attn and c_proj (inside attn): c_proj's input already differs
    out_ok = {"h.0.ln_1": True, "h.0.attn.c_attn": True, "h.0.attn.c_proj": False,
              "h.0.attn": False, "h.0": False, "head": False}
    in_ok = {"h.0.ln_1": True, "h.0.attn.c_attn": True, "h.0.attn.c_proj": False,
             "h.0.attn": True, "h.0": True}
    assert localize(order, out_ok, in_ok) == "h.0.attn"
    assert localize(order, {n: True for n in order}, in_ok) is None
    # a failure with no module to blame (the head has no recorded input): its consumer
    only_head = {n: n != "head" for n in order}
    assert localize(order, only_head, {n: True for n in in_ok}) == "head"
