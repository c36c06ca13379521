"""jittor_impl/row_gather.py's wide row copy against `jt.index_select`, bit for bit: on the CPU
(its CPU source) and, marked gpu, on CUDA (its kernel at each word size), plus whole beam
searches with and without it (both caches), which must pick the same sequences."""
import numpy as np
import pytest

from alignment.harness import jittor_on
from jittor_impl import fused_kernels
from jittor_impl.row_gather import gather_rows
from jittor_impl.runtime import jt
from shared.decode.beam_spec import BeamSettings
from shared.model.config import GPT2Config


@pytest.fixture(autouse=True)
def restore_mode():
    before = fused_kernels.fused_kernels_mode()
    yield
    fused_kernels.set_fused_kernels(before)


# (shape, dtype, rows): 16-byte rows, 4-byte rows, 1-byte rows (odd bool rows), a row repeated,
# a batch widened to its beams (more rows out than in), one row of one element.
CASES = [
    ((6, 4, 8, 16), "float32", [5, 0, 0, 3, 1, 2]),
    ((5, 3, 7), "float32", [4, 4, 1, 0, 2]),
    ((4, 3, 5), "bool", [3, 2, 1, 0]),
    ((3, 2, 16), "bfloat16", [2, 2, 2]),
    ((3, 2, 3), "float16", [0, 2, 1]),
    ((2, 5, 8), "int32", [1, 1, 0, 0, 1, 1, 0, 0]),
    ((7, 1), "float32", [6]),
]


def _source(shape, dtype, seed=0):
    values = np.random.default_rng(seed).normal(size=shape) * 100
    if dtype == "bool":
        return jt.array(values > 0)
    return jt.array(values.astype(np.float32)).cast(dtype)


def _check_cases():
    for shape, dtype, rows in CASES:
        x, r = _source(shape, dtype), jt.array(np.array(rows, dtype=np.int32))
        fused_kernels.set_fused_kernels("on")
        got = gather_rows(x, r)
        want = jt.index_select(x, 0, r)
        assert got.dtype == want.dtype and list(got.shape) == list(want.shape), (shape, dtype)
        g, w = got.numpy(), want.numpy()
        if dtype in ("bfloat16", "float16"):  # compare the stored bits, not rounded floats
            g, w = g.view(np.uint16), w.view(np.uint16)
        np.testing.assert_array_equal(g, w, err_msg=f"{shape} {dtype} {rows}")


def test_gather_rows_equals_index_select_cpu():
    _check_cases()


def test_gather_rows_out_of_range_row_is_zero_cpu():
    fused_kernels.set_fused_kernels("on")
    x = jt.array(np.arange(12, dtype=np.float32).reshape(3, 4) + 1)
    got = gather_rows(x, jt.array(np.array([2, 3, -1, 0], dtype=np.int32))).numpy()
    np.testing.assert_array_equal(got, [[9, 10, 11, 12], [0] * 4, [0] * 4, [1, 2, 3, 4]])


def test_gather_rows_takes_index_select_when_off_or_exact_auto_on_cpu():
    x = jt.array(np.ones((3, 4), dtype=np.float32))
    fused_kernels.set_fused_kernels("off")
    assert not fused_kernels.wanted(x, "gather", exact=True)
    fused_kernels.set_fused_kernels("auto")  # a copy is exact: on CUDA in fp32 too, never on the CPU
    assert fused_kernels.wanted(x, "gather", exact=True) == bool(jt.flags.use_cuda)
    assert not fused_kernels.wanted(x, "gather")  # the mixed-precision rule would have said no
    with pytest.raises(ValueError, match="rows must be 1-d"):
        gather_rows(x, jt.array(np.zeros((2, 2), dtype=np.int32)))


CONFIG = GPT2Config(vocab_size=97, n_positions=96, n_ctx=96, n_embd=32, n_layer=2, n_head=4)


def _searches(cache):
    """The sequences of one beam search over three queries of different lengths, with the wide copy
    and with Jittor's index_select."""
    from jittor_impl import beam
    from jittor_impl.model import GPT2LMModel
    rng = np.random.default_rng(4)
    query = rng.integers(1, CONFIG.vocab_size, size=(3, 9))
    query_len = np.array([9, 4, 6])
    settings = BeamSettings(beam=4, eval_len=20, no_repeat_ngram_size=3, eos_token_ids=(0,))
    model = GPT2LMModel(CONFIG, seed=5)
    out = {}
    kept = set(fused_kernels._ops)
    fused_kernels._ops.intersection_update({"gather"})  # the copy alone: the other decoding
    try:  # kernels have their own test (tests/test_jittor_decode_attention.py)
        for mode in ("on", "off"):
            fused_kernels.set_fused_kernels(mode)
            out[mode] = beam.beam_search(model, query, query_len, settings, cache=cache).numpy()
    finally:
        fused_kernels._ops.update(kept)
    return out


@pytest.mark.parametrize("cache", ["per_row", "shared_prefix"])
def test_beam_search_same_with_the_wide_copy_cpu(cache):
    out = _searches(cache)
    np.testing.assert_array_equal(out["on"], out["off"])


@pytest.mark.gpu
def test_gather_rows_equals_index_select_cuda():
    with jittor_on("cuda"):
        _check_cases()


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["per_row", "shared_prefix"])
def test_beam_search_same_with_the_wide_copy_cuda(cache):
    with jittor_on("cuda"):
        out = _searches(cache)
    np.testing.assert_array_equal(out["on"], out["off"])
