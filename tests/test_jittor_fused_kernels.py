"""The fused GELU and LayerNorm kernels (jittor_impl/fused_kernels.py) against the exact path of
jittor_impl/ops.py: values and gradients, on the CPU (their CPU sources) and, marked gpu, on
CUDA (their CUDA sources, at the model's feature widths), plus the switch that picks them."""
import numpy as np
import pytest

from alignment.harness import jittor_on
from jittor_impl import fused_kernels, ops, precision
from jittor_impl.runtime import jt


@pytest.fixture(autouse=True)
def restore_mode():
    before = fused_kernels.fused_kernels_mode()
    yield
    fused_kernels.set_fused_kernels(before)


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = (rng.normal(size=shape) * 3 + rng.normal(size=(c,))).astype(np.float32)
    w = rng.normal(size=(c,)).astype(np.float32)
    b = rng.normal(size=(c,)).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    return x, w, b, g


def _run(mode, x, w, b, g, dtype="float32"):
    """GELU and LayerNorm outputs and gradients (as float32 numpy) through ops.py in `mode`."""
    fused_kernels.set_fused_kernels(mode)
    xj, wj, bj, gj = jt.array(x).cast(dtype), jt.array(w), jt.array(b), jt.array(g).cast(dtype)
    out = {}
    y = ops.gelu(xj)
    out["gelu"], out["gelu dx"] = y, jt.grad((y * gj).float32().sum(), xj)
    y = ops.layer_norm(xj, wj, bj, 1e-5)
    out["ln"] = y
    out["ln dx"], out["ln dw"], out["ln db"] = jt.grad((y * gj).float32().sum(), [xj, wj, bj])
    # The exact path's types: GELU keeps x's, LayerNorm promotes x with its float32 weight.
    assert out["gelu"].dtype == xj.dtype and out["ln"].dtype == (xj[..., :1] * wj[:1]).dtype
    return {k: v.float32().numpy() for k, v in out.items()}


def _compare(got, want, rtol, atol):
    for name in want:
        assert np.isfinite(got[name]).all(), name
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("shape", [(3, 5, 96), (7, 80)])
def test_fused_kernels_match_exact_path_fp32_cpu(shape):
    x, w, b, g = _inputs(shape)
    _compare(_run("on", x, w, b, g), _run("off", x, w, b, g), rtol=1e-5, atol=2e-5)


def test_fused_kernels_bf16_cpu_within_bf16_error():
    """bf16 storage, float32 arithmetic: against the exact path on the same bf16-rounded values
    computed in float32, the error is bf16's rounding of the output (2^-8 relative)."""
    x, w, b, g = _inputs((4, 6, 64), seed=1)
    xr = jt.array(x).cast("bfloat16").float32().numpy()
    gr = jt.array(g).cast("bfloat16").float32().numpy()
    want = _run("off", xr, w, b, gr)
    got = _run("on", x, w, b, g, dtype="bfloat16")
    for name in ("gelu", "gelu dx", "ln", "ln dx"):
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(got[name], want[name], rtol=1e-2, atol=1e-2 * scale, err_msg=name)
    for name in ("ln dw", "ln db"):  # float32 sums of products of the same bf16 values
        np.testing.assert_allclose(got[name], want[name], rtol=1e-2, atol=1e-2 * np.abs(want[name]).max())


def test_gelu_gradient_finite_at_large_inputs():
    x = np.array([-40.0, -11.7, -10.3, 0.0, 10.5, 40.0], dtype=np.float32)
    fused_kernels.set_fused_kernels("on")
    xj = jt.array(x)
    d = jt.grad(ops.gelu(xj).sum(), xj).numpy()
    np.testing.assert_allclose(d, [0.0, 0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def _gelu_grad_inside_autocast(x, g):
    """(dx inside autocast, dx outside it) of the fused GELU for float32 x; the output's gradient
    holds bf16 values in both (inside autocast it reaches GELU as bf16, as from the next product)."""
    fused_kernels.set_fused_kernels("on")
    out = []
    for low in ("bfloat16", None):
        xj, gj = jt.array(x), jt.array(g).cast("bfloat16").float32()
        with precision.autocast(low):
            y = ops.gelu(xj)
        out.append(jt.grad((y.float32() * gj).sum(), xj))
    return out


def _check_gelu_grad_inside_autocast():
    x, _, _, g = _inputs((6, 5, 64), seed=4)
    low, full = _gelu_grad_inside_autocast(x, g)
    # stored in the products' type: the float32 gradient rounded by this device's own cast
    assert str(low.dtype) == "bfloat16" and str(full.dtype) == "float32"
    np.testing.assert_array_equal(low.float32().numpy(), full.cast("bfloat16").float32().numpy())


def test_gelu_gradient_inside_autocast_is_the_rounded_float32_one_cpu():
    _check_gelu_grad_inside_autocast()


@pytest.mark.gpu
def test_gelu_gradient_inside_autocast_is_the_rounded_float32_one_cuda():
    with jittor_on("cuda"):
        _check_gelu_grad_inside_autocast()


def _gelu_inputs():
    """Values across GELU's range: ordinary and large, both signs, the clamp's edges, zeros,
    subnormals and infinities."""
    rng = np.random.default_rng(7)
    edges = [0.0, -0.0, 1e-30, -1e-30, 1e-45, 7.5, -7.5, 8.0, -8.0, 50.0, -50.0, 1e4, -1e4,
             3.4e38, -3.4e38, np.inf, -np.inf]
    return np.concatenate([rng.normal(size=6000) * 3, rng.normal(size=2983) * 30, edges]).astype(np.float32)


@pytest.fixture
def decode_gelu():
    """The float32 decoding GELU taking part (left out of the default ops until its GPU test has run)."""
    fused_kernels._ops.add("decode_gelu")
    yield
    fused_kernels._ops.discard("decode_gelu")


def _check_gelu_exact_form_is_the_exact_path():
    """Decoding (float32, no gradient): the exact-form kernel gives ops.gelu's own bits."""
    x = jt.array(_gelu_inputs().reshape(3, 1, -1))
    with jt.no_grad():
        fused_kernels.set_fused_kernels("off")
        want = ops.gelu(x).numpy()
        fused_kernels.set_fused_kernels("auto")
        assert fused_kernels.gelu_wanted(x) == bool(jt.flags.use_cuda)
        fused_kernels.set_fused_kernels("on")
        got = ops.gelu(x).numpy()
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def test_gelu_exact_form_is_the_exact_path_bit_for_bit_cpu(decode_gelu):
    _check_gelu_exact_form_is_the_exact_path()


@pytest.mark.gpu
def test_gelu_exact_form_is_the_exact_path_bit_for_bit_cuda(decode_gelu):
    with jittor_on("cuda"):
        _check_gelu_exact_form_is_the_exact_path()


def test_gelu_exact_form_only_without_gradients(decode_gelu):
    """With a gradient wanted, or inside autocast, the float32 exact form is not taken."""
    x = jt.ones((2, 4))
    fused_kernels.set_fused_kernels("auto")
    assert not fused_kernels.gelu_wanted(x)  # the CPU, gradients on
    with jt.no_grad():
        assert fused_kernels.gelu_wanted(x) == bool(jt.flags.use_cuda)
        fused_kernels.set_fused_kernels("off")
        assert not fused_kernels.gelu_wanted(x)
    fused_kernels.set_fused_kernels("on")
    y = ops.gelu(x)  # the training kernel: it has a backward
    assert np.isfinite(jt.grad(y.sum(), x).numpy()).all()


def _ln_decoding(mode, x, w, b):
    fused_kernels.set_fused_kernels(mode)
    with jt.no_grad():
        return ops.layer_norm(jt.array(x), jt.array(w), jt.array(b), 1e-5).numpy()


def test_layer_norm_decoding_form_matches_exact_path_cpu():
    """Float32 decoding: the forward-only kernel's CPU source against ops.py's reductions (the
    same float32 arithmetic, the sums in another order: agreement to float32's last digits)."""
    fused_kernels.set_fused_kernels("auto")
    with jt.no_grad():
        assert not fused_kernels.layer_norm_wanted(jt.ones((2, 8)))  # "auto" on the CPU: no
    for shape in ((5, 1, 1024), (3, 7, 80)):
        x, w, b, _ = _inputs(shape, seed=shape[-1])
        np.testing.assert_allclose(_ln_decoding("on", x, w, b), _ln_decoding("off", x, w, b),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_layer_norm_decoding_form_cuda_no_less_accurate_and_repeatable():
    """Float32 decoding on CUDA: the kernel's sums run in another order than Jittor's atomic adds,
    so the bits differ; against float64 its error is no larger than the exact path's (mean and
    largest over 1050 rows of the model's widths), and unlike that path it repeats bit for bit."""
    for width in (768, 1024, 1280):
        x, w, b, _ = _inputs((1050, 1, width), seed=width)
        x64 = x.astype(np.float64)
        u = x64.mean(-1, keepdims=True)
        ref = w * (x64 - u) / np.sqrt(((x64 - u) ** 2).mean(-1, keepdims=True) + 1e-5) + b
        with jittor_on("cuda"):
            fused_kernels.set_fused_kernels("auto")
            assert fused_kernels.layer_norm_wanted(jt.array(x)) is False  # gradients on: exact path
            with jt.no_grad():
                assert fused_kernels.layer_norm_wanted(jt.array(x))
            got = [_ln_decoding("auto", x, w, b) for _ in range(3)]
            want = _ln_decoding("off", x, w, b)
        assert all(np.array_equal(g, got[0]) for g in got)
        err_got, err_want = np.abs(got[0] - ref), np.abs(want - ref)
        assert err_got.mean() <= err_want.mean() * 1.05, (width, err_got.mean(), err_want.mean())
        assert err_got.max() <= err_want.max() * 1.5, (width, err_got.max(), err_want.max())


def test_switch_chooses_the_kernels():
    x = jt.ones((2, 4))
    fused_kernels.set_fused_kernels("auto")
    assert not fused_kernels.wanted(x, "gelu")  # the CPU: never by default
    with precision.autocast("bfloat16"):
        assert fused_kernels.wanted(x, "gelu") == bool(jt.flags.use_cuda)
    fused_kernels.set_fused_kernels("on")
    assert fused_kernels.wanted(x, "gelu")
    fused_kernels.set_fused_kernels("off")
    with precision.autocast("bfloat16"):
        assert not fused_kernels.wanted(x.cast("bfloat16"), "gelu")
    with pytest.raises(ValueError, match="fused kernel mode"):
        fused_kernels.set_fused_kernels("fast")


def test_layer_norm_rejects_mismatched_weight():
    fused_kernels.set_fused_kernels("on")
    with pytest.raises(ValueError, match="does not fit"):
        ops.layer_norm(jt.ones((2, 8)), jt.ones(4), jt.zeros(4), 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("width", [768, 1024, 1280])
def test_fused_kernels_match_exact_path_fp32_cuda(width):
    x, w, b, g = _inputs((2, 33, width), seed=width)
    with jittor_on("cuda"):
        fused_kernels.set_fused_kernels("auto")
        assert fused_kernels.wanted(jt.ones((1,)).cast("bfloat16"), "layer_norm")  # auto: bf16 on CUDA
        got, want = _run("on", x, w, b, g), _run("off", x, w, b, g)
    _compare(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_fused_kernels_bf16_cuda_within_bf16_error():
    x, w, b, g = _inputs((4, 64, 1024), seed=3)
    with jittor_on("cuda"):  # CUDA rounds to bf16 where the CPU truncates: round here
        xr = jt.array(x).cast("bfloat16").float32().numpy()
        gr = jt.array(g).cast("bfloat16").float32().numpy()
        want = _run("off", xr, w, b, gr)
        got = _run("auto", x, w, b, g, dtype="bfloat16")
    for name in want:
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(got[name], want[name], rtol=1e-2, atol=1e-2 * scale, err_msg=name)


def _softmax_run(mode, x, g, autocast=None, dtype="float32"):
    """The attention softmax's output and input gradient through ops.softmax in `mode`."""
    fused_kernels.set_fused_kernels(mode)
    with precision.autocast(autocast):
        xj = jt.array(x).cast(dtype)
        y = ops.softmax(xj, dim=-1)
        dx = jt.grad((y.float32() * jt.array(g)).sum(), xj)
        return y.dtype, y.float32().numpy(), dx.float32().numpy()


def _scores(shape, seed=0):
    """Scores as the attention passes them: scaled, the causal mask's -1e10 above the diagonal."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 4).astype(np.float32)
    x = np.where(np.tril(np.ones(shape[-2:], dtype=bool)), x, np.float32(-1e10))
    return x, rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 3, 40, 40), (5, 70)])
def test_fused_softmax_matches_exact_path_fp32_cpu(shape):
    x, g = _scores(shape)
    dtype, y, dx = _softmax_run("on", x, g)
    _, y0, dx0 = _softmax_run("off", x, g)
    assert dtype == "float32"
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx, dx0, rtol=1e-5, atol=1e-6)


def test_fused_softmax_inside_autocast_stores_bf16_cpu():
    x, g = _scores((2, 2, 64, 64), seed=2)
    dtype, y, dx = _softmax_run("on", x, g, autocast="bfloat16")
    _, y0, dx0 = _softmax_run("off", x, g)
    assert dtype == "bfloat16"
    np.testing.assert_allclose(y, y0, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(dx, dx0, rtol=1e-2, atol=1e-2 * np.abs(dx0).max())


def test_softmax_wide_or_other_axis_takes_exact_path():
    fused_kernels.set_fused_kernels("on")
    assert fused_kernels.softmax_wanted(jt.ones((2, 64)), -1)
    assert not fused_kernels.softmax_wanted(jt.ones((2, 64)), 0)
    assert not fused_kernels.softmax_wanted(jt.ones((2, 4096)), -1)


@pytest.mark.gpu
def test_fused_softmax_cuda():
    """fp32 against the exact path; inside autocast (the default on CUDA) bf16 probabilities."""
    x, g = _scores((2, 4, 512, 512), seed=4)
    with jittor_on("cuda"):
        _, y, dx = _softmax_run("on", x, g)
        _, y0, dx0 = _softmax_run("off", x, g)
        dtype, y16, dx16 = _softmax_run("auto", x, g, autocast="bfloat16")
    np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-6)
    assert dtype == "bfloat16"
    np.testing.assert_allclose(y16, y0, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(dx16, dx0, rtol=1e-2, atol=1e-2 * np.abs(dx0).max())
