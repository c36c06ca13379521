"""The Jittor products that bypass Jittor's own matmul (jittor_impl/precision.py).

On CUDA, `_CublasProduct` calls cuBLAS directly with hand-written gradients. The gradient
formulas are checked here on any machine: a stand-in for Jittor's cublas ops computes the same
(a, b, trans_a, trans_b) contract with plain products, and forward values and both gradients
must equal those of `jt.matmul` through autodiff. The real cuBLAS path runs in the GPU tests.
"""
import numpy as np
import pytest

from jittor_impl import precision
from jittor_impl.runtime import jt


class StandInCublas:
    """`cublas_matmul(a, b, trans_a, trans_b)` = op(a) @ op(b), computed without cuBLAS."""

    @staticmethod
    def cublas_matmul(a, b, trans_a, trans_b):
        a = a.transpose(0, 1) if trans_a else a
        b = b.transpose(0, 1) if trans_b else b
        return jt.matmul(a, b)


@pytest.mark.parametrize("transpose_b", [False, True])
def test_product_and_gradients_match_autodiff(transpose_b):
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((2, 5, 7)).astype(np.float32)
    b_np = rng.standard_normal((3, 7) if transpose_b else (7, 3)).astype(np.float32)
    upstream = rng.standard_normal((2, 5, 3)).astype(np.float32)
    results = []
    for ops in (StandInCublas, None):
        a, b = jt.array(a_np), jt.array(b_np)
        if ops is None:
            out = jt.matmul(a, b.transpose(0, 1) if transpose_b else b)
        else:
            out = precision._product_2d_weight(a, b, transpose_b, ops)
        grads = jt.grad((out * jt.array(upstream)).sum(), [a, b])
        results.append([out.numpy(), grads[0].numpy(), grads[1].numpy()])
    for mine, reference in zip(*results):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)


def test_frozen_operand_gets_no_gradient():
    a = jt.array(np.ones((4, 3), np.float32))
    b = jt.array(np.ones((3, 2), np.float32)).stop_grad()
    out = precision._product_2d_weight(a, b, False, StandInCublas)
    grad_a, grad_b = jt.grad(out.sum(), [a, b])
    np.testing.assert_array_equal(grad_b.numpy(), np.zeros((3, 2)))  # the frozen operand
    np.testing.assert_allclose(grad_a.numpy(), np.full((4, 3), 2.0))


@pytest.mark.parametrize("order", [(0, 2, 1, 3), (1, 0, 2), (2, 0, 1)])
def test_gather_permute_and_its_gradient_match_permute(order):
    rng = np.random.default_rng(1)
    shape = (2, 3, 4, 5)[:len(order)]
    x_np = rng.standard_normal(shape).astype(np.float32)
    upstream = rng.standard_normal([shape[d] for d in order]).astype(np.float32)
    results = []
    for permute in (lambda x: precision._Permute(order)(x), lambda x: x.permute(*order)):
        x = jt.array(x_np)
        out = permute(x)
        (grad,) = jt.grad((out * jt.array(upstream)).sum(), [x])
        results.append((out.numpy(), grad.numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("shape,order", [((3, 1, 4, 5), (0, 2, 1, 3)),   # split_heads of one token
                                         ((3, 4, 1, 5), (0, 2, 1, 3)),   # merge_heads of one token
                                         ((3, 4, 2, 5), (0, 2, 1, 3))])  # a real permute
def test_permute_moving_only_unit_axes_is_a_reshape(shape, order):
    """precision.permute takes a reshape when only size-1 axes move (the decoded token's heads):
    the same values and gradient as Jittor's permute, bit for bit."""
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal(shape).astype(np.float32)
    upstream = rng.standard_normal([shape[d] for d in order]).astype(np.float32)
    results = []
    for permute in (lambda x: precision.permute(x, *order), lambda x: x.permute(*order)):
        x = jt.array(x_np)
        out = permute(x)
        (grad,) = jt.grad((out * jt.array(upstream)).sum(), [x])
        results.append((out.numpy(), grad.numpy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
