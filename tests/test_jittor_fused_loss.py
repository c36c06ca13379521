"""The fused cross-entropy of the Jittor twin (jittor_impl/fused_kernels.py) against the exact path
of ops.cross_entropy (losses and the logits' gradient, label smoothing and ignored labels), on
the CPU (its CPU source) and, marked gpu, on CUDA (its CUDA source, at GPT-2's vocabulary); and
the mixed-precision forms around it: the GELU kernel's bf16 output inside autocast, the tied
head's bf16 logits, and products of frozen weights that keep no input for the backward."""
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


def _logits(n, v, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, v)) * 3).astype(np.float32)
    labels = rng.integers(0, v, size=n)
    labels[::5] = -1  # ignored rows
    g = rng.normal(size=n).astype(np.float32)
    return x, labels, g


def _ce(mode, x, labels, g, smoothing, dtype="float32"):
    fused_kernels.set_fused_kernels(mode)
    xj = jt.array(x).cast(dtype)
    loss = ops.cross_entropy(xj, jt.array(labels), smoothing)
    dx = jt.grad((loss * jt.array(g)).sum(), xj)
    assert loss.dtype == "float32" and dx.dtype == xj.dtype
    return loss.numpy(), dx.float32().numpy()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_cross_entropy_matches_exact_path_fp32_cpu(smoothing):
    x, labels, g = _logits(12, 300, seed=1)
    loss, dx = _ce("on", x, labels, g, smoothing)
    loss0, dx0 = _ce("off", x, labels, g, smoothing)
    assert (loss[labels == -1] == 0).all() and (dx[labels == -1] == 0).all()
    np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-7)


def test_fused_cross_entropy_bf16_logits_cpu():
    """bf16 logits (as the tied head leaves them inside autocast): float32 arithmetic on the same
    values as the exact path, the gradient rounded to bf16."""
    x, labels, g = _logits(10, 257, seed=2)
    xr = jt.array(x).cast("bfloat16").float32().numpy()
    loss0, dx0 = _ce("off", xr, labels, g, 0.1)
    loss, dx = _ce("on", x, labels, g, 0.1, dtype="bfloat16")
    np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx0, rtol=1e-2, atol=1e-2 * np.abs(dx0).max())


def test_cross_entropy_rejects_bad_shapes():
    fused_kernels.set_fused_kernels("on")
    with pytest.raises(ValueError, match="cross_entropy: logits"):
        fused_kernels.cross_entropy(jt.ones((2, 3, 4)), jt.zeros((2,), dtype="int64"), 0.0)


def test_gelu_inside_autocast_stores_the_compute_type_cpu():
    """Inside autocast the GELU kernel writes bf16 (what the next product casts to), the same
    values as float32 GELU rounded; its input gradient is written in bf16 too (the product it feeds
    rounds it to bf16 anyway: tests/test_jittor_fused_kernels.py checks its values)."""
    x = np.random.default_rng(3).normal(size=(4, 64)).astype(np.float32) * 3
    fused_kernels.set_fused_kernels("on")
    xj = jt.array(x)
    with precision.autocast("bfloat16"):
        y = ops.gelu(xj)
        dx = jt.grad(y.float32().sum(), xj)
    assert y.dtype == "bfloat16" and dx.dtype == "bfloat16"
    want = ops.gelu(jt.array(x)).cast("bfloat16").float32().numpy()
    np.testing.assert_array_equal(y.float32().numpy(), want)


@pytest.mark.gpu
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_cross_entropy_cuda(smoothing):
    x, labels, g = _logits(64, 50257, seed=4)
    with jittor_on("cuda"):
        loss, dx = _ce("on", x, labels, g, smoothing)
        loss0, dx0 = _ce("off", x, labels, g, smoothing)
        xr = jt.array(x).cast("bfloat16").float32().numpy()
        loss16, dx16 = _ce("auto", x, labels, g, smoothing, dtype="bfloat16")
        loss16_0, dx16_0 = _ce("off", xr, labels, g, smoothing)
    np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx0, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(loss16, loss16_0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx16, dx16_0, rtol=1e-2, atol=1e-2 * np.abs(dx16_0).max())


@pytest.mark.gpu
def test_mixed_precision_head_and_frozen_products_cuda():
    """Inside autocast on CUDA the tied head's logits are bf16 (the fused loss reads them) and a
    frozen weight's product returns no gradient for it but the right one for its input."""
    rng = np.random.default_rng(5)
    h, w = rng.normal(size=(6, 32)).astype(np.float32), rng.normal(size=(50, 32)).astype(np.float32)
    with jittor_on("cuda"):
        fused_kernels.set_fused_kernels("auto")
        hj, wj = jt.array(h), jt.array(w)
        wj.requires_grad = False
        with precision.autocast("bfloat16"):
            logits = ops.matmul_transpose(hj, wj)
            assert logits.dtype == "bfloat16"
            y = ops.matmul(hj, wj.transpose(0, 1).stop_grad())
        dh = jt.grad((logits.float32() * 2).sum(), hj).numpy()
    want = 2 * np.ones((6, 50), np.float32) @ jt.array(w).cast("bfloat16").float32().numpy()
    np.testing.assert_allclose(dh, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
    assert y.shape == [6, 50]
