"""alignment.model_trace on two pairs of twins (GPT-2 + LoRA, and a small MLP with LayerNorm), and
the localization rule of alignment.compare on hand-made pass/fail patterns."""
import numpy as np
import pytest

from alignment import mlp_twins
from alignment.compare import check_tensor, compare_traces, localize
from alignment.gpt2_trace import METHODS, ROOT_OUTPUTS, auto_diff_case, random_batch
from alignment.harness import seeded_state, tiny_config
from alignment.model_trace import module_of, record
from alignment.port_diff import split_inputs


def traces(torch_model, jittor_model, reference, inputs, loss_fn, **names):
    """(torch fp32, Jittor, torch float64) traces of one batch."""
    split = split_inputs(inputs)
    return (record("torch", torch_model, split, loss_fn, **names),
            record("jittor", jittor_model, split, loss_fn, **names),
            record("torch", reference, split, loss_fn, dtype="float64", **names))


@pytest.fixture(scope="module")
def gpt2_traces():
    import copy
    config = tiny_config(lora_dim=4)
    tm, jm, inputs, options = auto_diff_case(config, seeded_state(config, 0),
                                             random_batch(config, vocab=2000))
    return config, traces(tm, jm, copy.deepcopy(tm).double(), inputs, options["loss_fn"],
                          methods=METHODS, output_names=ROOT_OUTPUTS)


def test_gpt2_trace_records_every_submodule(gpt2_traces):
    config, (t, j, _) = gpt2_traces
    assert t.order == j.order
    for i in range(config.n_layer):
        for part in ("", ".ln_1", ".ln_2", ".attn", ".attn.c_attn", ".attn.c_attn.lora_delta",
                     ".mlp", ".mlp.c_fc", ".mlp.c_proj"):
            assert f"transformer.h.{i}{part}" in t.order
        # a Block returns (hidden, (key, value)): every tensor of it is recorded
        assert {f"transformer.h.{i}.out[0]", f"transformer.h.{i}.out[1][0]",
                f"transformer.h.{i}.out[1][1]"} <= set(t.outputs)
    assert t.order[-2:] == ["lm_head", "loss"] and t.roots == ["lm_head", "loss"]
    assert t.parents["transformer"] == "lm_head" and t.parents["transformer.h.1.mlp.c_fc"] == \
        "transformer.h.1.mlp"
    assert t.outputs["lm_head"].shape == (2, 16, config.vocab_size)
    # gradients w.r.t. every float output and every parameter, in both backends
    for trace in (t, j):
        assert set(trace.output_grads) == {n for n in trace.outputs}
        assert len(trace.param_grads) == 2 + 14 * config.n_layer + 2  # wte, wpe; per block; ln_f
        assert all(np.abs(g).sum() > 0 for g in trace.param_grads.values())
        # the cache (key, value) is returned, not used by the loss: its own gradient is zero,
        # whatever attention itself does with the same tensors
        assert np.abs(trace.output_grads["transformer.h.0.out[1][0]"]).max() == 0.0
    # the head's gradient is d loss / d logits: rows of a masked position are zero
    assert np.abs(t.output_grads["lm_head"][-1, -1]).max() == 0.0


def test_gpt2_twins_agree_within_the_noise_floor(gpt2_traces):
    _, (t, j, ref) = gpt2_traces
    result = compare_traces(j, t, ref)
    assert result.passed(), [r["name"] for r in result.failing()]
    assert result.first_divergence == {"forward": None, "backward": None}
    # torch's own fp32 error is the yardstick: small but not zero past the embeddings
    errs = [r["err_base"] for r in result.records if r["kind"] == "outputs"]
    assert 0 < max(errs) < 1e-5


def test_mlp_twins_trace_and_compare():
    state = mlp_twins.init_state(0)
    inputs = mlp_twins.batch(0)
    kw = dict(output_names=("logits", "loss"))
    loss = lambda out: out[1]  # noqa: E731
    t, j, ref = traces(mlp_twins.torch_mlp(state), mlp_twins.jittor_mlp(state),
                       mlp_twins.torch_mlp(state, "float64"), inputs, loss, **kw)
    assert t.order == j.order == ["norm", "fc1", "act", "fc2", "logits", "loss"]
    assert sorted(t.param_grads) == sorted(j.param_grads) == sorted(state)
    result = compare_traces(j, t, ref)
    assert result.passed(), [r["name"] for r in result.failing()]
    # a planted difference in the Jittor twin (LayerNorm eps 1e-5 -> 1e-3) is found at `norm`
    jm = mlp_twins.jittor_mlp(state)
    jm.norm.eps = 1e-3
    bad = compare_traces(record("jittor", jm, split_inputs(inputs), loss, **kw), t, ref)
    assert bad.first_divergence["forward"] == "norm"


def test_module_of_names_the_call_of_every_output_tensor():
    assert module_of("transformer.h.0.out[1][0]") == "transformer.h.0"
    assert module_of('head.out["logits"]') == "head"
    assert module_of("transformer.h.0.mlp") == "transformer.h.0.mlp"


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
