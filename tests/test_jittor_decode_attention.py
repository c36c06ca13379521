"""Jittor's float32 decoding kernels (jittor_impl/decode_attention.py, and fused_kernels.py's
decoding LayerNorm and GELU) against ops.py's exact path: the attention values on the CPU (its
CPU source) and, marked gpu, on CUDA against float64 (no less accurate than the path it replaces,
and repeatable), the rule that picks them, and a whole beam search with and without them."""
import numpy as np
import pytest

from alignment.harness import jittor_on
from jittor_impl import decode_attention, fused_kernels, ops
from jittor_impl.runtime import jt
from shared.decode.beam_spec import BeamSettings
from shared.model.config import GPT2Config


DECODING_OPS = ("decode_attention", "decode_gelu")


@pytest.fixture(autouse=True)
def restore_mode():
    """The mode and the ops restored after each test; the decoding kernels take part in it even
    where JLA_FUSED_OPS leaves them out."""
    before, ops_before = fused_kernels.fused_kernels_mode(), set(fused_kernels._ops)
    fused_kernels._ops.update(DECODING_OPS)
    yield
    fused_kernels.set_fused_kernels(before)
    fused_kernels._ops.clear()
    fused_kernels._ops.update(ops_before)


def test_decoding_kernels_are_fused_ops_and_can_be_left_out():
    """The float32 decoding attention and GELU are fused ops like the others (taken by "auto" on
    CUDA once their whole-beam GPU test passed); JLA_FUSED_OPS without them leaves them out."""
    assert set(DECODING_OPS) <= set(fused_kernels.OPS)
    fused_kernels.set_fused_kernels("on")
    with jt.no_grad():
        q, k = jt.ones((2, 2, 1, 8)), jt.ones((2, 2, 5, 8))
        len_kv = jt.array(np.array([5, 3], dtype=np.int32))
        assert decode_attention.wanted(q, k, len_kv) and fused_kernels.gelu_wanted(q)
        fused_kernels._ops.difference_update(DECODING_OPS)
        assert not decode_attention.wanted(q, k, len_kv)
        assert not fused_kernels.gelu_wanted(q)


def _inputs(rows, heads, keys, d, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(rows, heads, n, d)).astype(np.float32) for n in (1, keys, keys))
    lengths = rng.integers(1, keys + 1, size=rows).astype(np.int32)
    lengths[0] = keys  # one row sees every key
    return q * 2, k, v, lengths


def _attention(mode, q, k, v, lengths, divisor=None):
    fused_kernels.set_fused_kernels(mode)
    with jt.no_grad():
        args = [jt.array(a) for a in (q, k, v)]
        len_kv = jt.array(lengths)
        assert decode_attention.wanted(args[0], args[1], len_kv) == (mode == "on" or
                                                                      (mode == "auto" and bool(jt.flags.use_cuda)))
        return ops.fused_attention(*args, len_kv=len_kv, divisor=divisor).numpy()


@pytest.mark.parametrize("rows,heads,keys,d", [(4, 3, 37, 8), (6, 2, 130, 64), (3, 1, 5, 12), (2, 2, 300, 128)])
def test_decode_attention_matches_exact_path_cpu(rows, heads, keys, d):
    q, k, v, lengths = _inputs(rows, heads, keys, d, seed=keys)
    got = _attention("on", q, k, v, lengths, divisor=3.0)
    want = _attention("off", q, k, v, lengths, divisor=3.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)  # float32 sums in another order


def test_decode_attention_only_for_float32_decoding():
    fused_kernels.set_fused_kernels("on")
    q, k, v = jt.ones((2, 2, 1, 8)), jt.ones((2, 2, 5, 8)), jt.ones((2, 2, 5, 8))
    len_kv = jt.array(np.array([5, 3], dtype=np.int32))
    assert not decode_attention.wanted(q, k, len_kv)  # gradients on: the kernel has no backward
    with jt.no_grad():
        assert decode_attention.wanted(q, k, len_kv)
        assert not decode_attention.wanted(q, k, None)  # no lengths: a cache of exactly the past
        assert not decode_attention.wanted(jt.ones((2, 2, 3, 8)), k, len_kv)  # more than one query row
        assert not decode_attention.wanted(jt.ones((2, 2, 1, 6)), jt.ones((2, 2, 5, 6)), len_kv)  # no float4
        assert not decode_attention.wanted(q.cast("bfloat16"), k, len_kv)
        fused_kernels.set_fused_kernels("auto")
        assert decode_attention.wanted(q, k, len_kv) == bool(jt.flags.use_cuda)


@pytest.mark.gpu
def test_decode_attention_cuda_no_less_accurate_and_repeatable():
    """At the beam's shape (rows x 16 heads x 128 keys x 64): against float64, the kernel's error
    is no larger than the exact path's (mean, and largest within a factor 2), and it repeats."""
    q, k, v, lengths = _inputs(210, 16, 128, 64, seed=1)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    s = q64 @ k64.swapaxes(-1, -2) / 8.0
    s = np.where(np.arange(128)[None, None, None, :] >= lengths[:, None, None, None], -1e10, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v64
    with jittor_on("cuda"):
        got = [_attention("auto", q, k, v, lengths) for _ in range(3)]
        want = _attention("off", q, k, v, lengths)
    assert all(np.array_equal(g, got[0]) for g in got)
    err_got, err_want = np.abs(got[0] - ref), np.abs(want - ref)
    assert err_got.mean() <= err_want.mean() * 1.25, (err_got.mean(), err_want.mean())
    assert err_got.max() <= err_want.max() * 2, (err_got.max(), err_want.max())


CONFIG = GPT2Config(vocab_size=97, n_positions=96, n_ctx=96, n_embd=64, n_layer=2, n_head=4)


def beam_sequences(mode, config=CONFIG):
    """The per-row beam search of 4 queries by a random 2-layer model of `config` (CONFIG's
    vocabulary) in fused-kernel mode `mode` (test_jittor_row_table.py searches with it too)."""
    from jittor_impl import beam
    from jittor_impl.model import GPT2LMModel
    rng = np.random.default_rng(6)
    query = rng.integers(1, CONFIG.vocab_size, size=(4, 11))
    query_len = np.array([11, 4, 7, 9])
    settings = BeamSettings(beam=4, eval_len=24, no_repeat_ngram_size=3, eos_token_ids=(0,))
    model = GPT2LMModel(config, seed=8)
    fused_kernels.set_fused_kernels(mode)
    return beam.beam_search(model, query, query_len, settings, cache="per_row").numpy()


def test_beam_search_same_with_the_decoding_kernels_cpu():
    np.testing.assert_array_equal(beam_sequences("on"), beam_sequences("off"))


@pytest.mark.gpu
def test_beam_search_same_with_the_decoding_kernels_cuda():
    with jittor_on("cuda"):
        np.testing.assert_array_equal(beam_sequences("auto"), beam_sequences("off"))


def _gelu_exact_cuda():
    return fused_kernels._elementwise_cuda("jla_gelu_exact", fused_kernels._GELU_EXACT_CUDA)


CUDA_UNITS = {  # name: (source, input types, output types)
    "attention": (lambda: decode_attention._cuda(64, 8.0), ["float"] * 3 + ["int"], ["float"]),
    "attention_row_table": (lambda: decode_attention._cuda(64, 8.0, linked=True), ["float"] * 3 + ["int"] * 2,
                            ["float"]),
    "gelu": (_gelu_exact_cuda, ["float"], ["float"]),
    "layer_norm": (lambda: fused_kernels._ln_forward_cuda(1024, 1e-5), ["float"] * 3, ["float"] * 3),
}


@pytest.mark.parametrize("unit", list(CUDA_UNITS))
def test_decoding_cuda_sources_compile_for_hopper(unit, nvcc_compiles):
    """The float32 decoding kernels' CUDA sources (LayerNorm's forward serves training too) compile
    for sm_90 with Jittor's fast-math flag (nvcc only, no GPU needed)."""
    make, inputs, outputs = CUDA_UNITS[unit]
    source = make()
    cut = source.rindex("\n}\n") + 3  # jt.code's source: the kernels, then the launch code
    nvcc_compiles(source[:cut], source[cut:], inputs, outputs, flags=("--use_fast_math",),
                  header="typedef float float32;\n#include <cuda_runtime.h>\n#include <vector>\n"
                         + fused_kernels._HEADER)
