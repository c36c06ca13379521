"""A catalogue of typical port bugs, planted in the Jittor GPT-2 twin by monkeypatching (no file
edits): alignment/test_planted_bugs.py asserts that the harness flags and localizes each one, and
`scripts/diff_layers.py --plant NAME` shows what a localized bug looks like in the report.

Each entry of MODEL_BUGS: (plant(monkeypatch, jittor model), LoRA dropout to trace with,
where the harness must localize it: {"forward": module or None, "backward": module}).
`monkeypatch` is pytest's `monkeypatch` fixture in tests, or a `Patches()` outside them (both
offer `setattr(target, name, value)` and `setattr("module.attr", value)`, then `undo()`).
"""
import contextlib
import math
import types
from unittest import mock

_UNSET = object()


class Patches:
    """pytest.MonkeyPatch's setattr/undo over unittest.mock, so planting needs no pytest."""

    def __init__(self):
        self._stack = contextlib.ExitStack()

    def setattr(self, target, name, value=_UNSET):
        """setattr(obj, "name", value), or setattr("package.module.obj.name", value)."""
        patcher = (mock.patch(target, name) if value is _UNSET
                   else mock.patch.object(target, name, value))
        self._stack.enter_context(patcher)

    def undo(self):
        """Every attribute back as it was, the latest patch first."""
        self._stack.close()


def gelu_exact(x):
    from jittor_impl.runtime import jt
    return 0.5 * x * (1.0 + jt.erf(x / math.sqrt(2.0)))


def attn_math_without_scale(self, q, k, v, len_kv=None):
    """Attention._attn_math through the same ops (jittor_impl.ops, as model.py imports them),
    without the 1/sqrt(head_dim) scale."""
    import jittor_impl.model as jm
    w = jm.batched_matmul_transpose(q, k)  # missing: w / sqrt(head_dim)
    nd, ns = w.shape[-2], w.shape[-1]
    b = jm.causal_mask(nd, ns, w)
    w = w * b - 1e10 * (1 - b)
    if len_kv is not None:
        beyond = jm.jt.arange(ns).reshape(1, ns) >= len_kv.reshape(-1, 1)
        w = w.masked_fill(beyond.reshape(-1, 1, 1, ns), jm.MASK_VALUE)
    return jm.matmul(jm.softmax(w, dim=-1), v)


def causal_mask_off_by_one(nd, ns, like=None):
    """ops.causal_mask's signature, uncached, one diagonal too far: each query also sees the
    next key."""
    from jittor_impl.runtime import jt
    return jt.tril(jt.ones((nd, ns)), diagonal=ns - nd + 1).stop_grad()


def block_without_attention_residual(self, x, layer_past=None, len_past=None):
    a, present = self.attn(self.ln_1(x), layer_past=layer_past, len_past=len_past)
    x = a  # missing: x + a
    return x + self.mlp(self.ln_2(x)), present


def layer_norm_detached_statistics(self, x):
    u = x.mean(-1, keepdims=True).stop_grad()  # forward unchanged, backward wrong
    s = ((x - u) * (x - u)).mean(-1, keepdims=True).stop_grad()
    return self.weight * ((x - u) / (s + self.eps).sqrt()) + self.bias


def plant_gelu(mp, model):
    mp.setattr("jittor_impl.model.gelu", gelu_exact)


def plant_ln_eps(mp, model):
    model.transformer.h[1].ln_2.eps = 1e-6


def on_the_formula_path(mp, model):
    """The attention bugs are planted in model.py's formula (`_attn_math` and the names it
    calls); a model on the fused path ("sdpa", the default) computes through ops.fused_attention
    instead, so the planted model's attention is switched to the formula for the plant."""
    for block in model.transformer.h:
        mp.setattr(block.attn, "attn_impl", "math")


def plant_attn_scale(mp, model):
    on_the_formula_path(mp, model)
    mp.setattr("jittor_impl.model.Attention._attn_math", attn_math_without_scale)


def plant_mask(mp, model):
    on_the_formula_path(mp, model)
    mp.setattr("jittor_impl.model.causal_mask", causal_mask_off_by_one)


def plant_softmax_axis(mp, model):
    from jittor_impl.runtime import jt
    on_the_formula_path(mp, model)
    # model.py imports `softmax` from .ops; only the attention's softmax runs through that name
    mp.setattr("jittor_impl.model.softmax", lambda w, dim=-1: jt.nn.softmax(w, dim=-2))


def plant_residual(mp, model):
    mp.setattr("jittor_impl.model.Block.execute", block_without_attention_residual)


def plant_lora_scaling(mp, model):
    for block in model.transformer.h:
        block.attn.c_attn.scaling = block.attn.c_attn.scaling * block.attn.c_attn.r  # alpha, not alpha/r


def plant_lora_merge(mp, model):
    """The merge happens at the first forward, after alignment.auto_diff has copied torch's
    (unmerged) weights in: merged at planting, the copy would undo it."""
    from jittor_impl.lora import MergedLinear
    correct, execute = MergedLinear.delta_weight, MergedLinear.execute
    mp.setattr(MergedLinear, "delta_weight", lambda self: correct(self) / self.scaling)  # scaling lost

    def merged_execute(self, x):
        self.merge()  # once: a no-op when merged
        return execute(self, x)
    mp.setattr(MergedLinear, "execute", merged_execute)


def plant_dropout_not_shared(mp, model):
    from jittor_impl.runtime import jt
    mp.setattr("jittor_impl.lora.MergedLinear.lora_dropout",
               lambda self, x: jt.nn.dropout(x, self.dropout_p, is_train=True))


def plant_ln_backward(mp, model):
    layer = model.transformer.h[1].ln_2
    layer.execute = types.MethodType(layer_norm_detached_statistics, layer)


def plant_head_backward(mp, model):
    from jittor_impl import precision
    correct = precision._ProductWithTransposeCPU.grad

    def grad(self, grad_output):
        da, db = correct(self, grad_output)
        return da * 0.5, db  # the gradient into the hidden states is halved
    mp.setattr(precision._ProductWithTransposeCPU, "grad", grad)


MODEL_BUGS = {
    # name: (plant, dropout, expected {"forward": ..., "backward": ...} entries to check)
    "layernorm eps 1e-5 -> 1e-6 (h.1.ln_2)": (plant_ln_eps, 0.0, {"forward": "transformer.h.1.ln_2"}),
    "GELU exact instead of tanh": (plant_gelu, 0.0, {"forward": "transformer.h.0.mlp"}),
    "attention scale 1/sqrt(d) missing": (plant_attn_scale, 0.0, {"forward": "transformer.h.0.attn"}),
    "causal mask off by one": (plant_mask, 0.0, {"forward": "transformer.h.0.attn"}),
    "softmax over the query axis": (plant_softmax_axis, 0.0, {"forward": "transformer.h.0.attn"}),
    "attention residual missing": (plant_residual, 0.0, {"forward": "transformer.h.0"}),
    "LoRA scaling alpha instead of alpha/r": (
        plant_lora_scaling, 0.0, {"forward": "transformer.h.0.attn.c_attn.lora_delta"}),
    "LoRA merge drops the scaling": (plant_lora_merge, 0.0, {"forward": "transformer.h.0.attn.c_attn"}),
    "dropout mask not shared": (
        plant_dropout_not_shared, 0.1, {"forward": "transformer.h.0.attn.c_attn.lora_dropout"}),
    "LayerNorm statistics detached (backward only)": (
        plant_ln_backward, 0.0, {"forward": None, "backward": "transformer.h.1.ln_2"}),
    "tied head backward halves dL/dh (backward only)": (
        plant_head_backward, 0.0, {"forward": None, "backward": "lm_head"}),
}
