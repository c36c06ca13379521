"""The q/v LoRA update's mixed-precision form (lora.py `lora_delta`: one product with the padded
(2r, 3e) matrix of B, no full-width concat) computes what the float32 form (two products and a
concat with zeros) computes, in both twins: values and the gradients reaching lora_A and lora_B.
The float32 path itself is untouched (its rounding is what the alignment logs were made with)."""
import numpy as np
import pytest
import torch

from jittor_impl import lora as jittor_lora
from jittor_impl.runtime import jt
from torch_impl import lora as torch_lora

IN, OUT, R = 24, 3 * 24, 3


def _weights(seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(2 * R, IN)).astype(np.float32), rng.normal(size=(OUT // 3 * 2, R)).astype(np.float32),
            rng.normal(size=(2, 5, IN)).astype(np.float32), rng.normal(size=(2, 5, OUT)).astype(np.float32))


def _torch_delta(padded, seed):
    a, b, x, g = _weights(seed)
    layer = torch_lora.MergedLinear(IN, OUT, r=R, lora_alpha=8)
    with torch.no_grad():
        layer.lora_A.copy_(torch.from_numpy(a))
        layer.lora_B.copy_(torch.from_numpy(b))
    torch_lora.mixed_precision = (lambda x: padded)  # restored by the fixture
    delta = layer.lora_delta(torch.from_numpy(x))
    (delta * torch.from_numpy(g)).sum().backward()
    return [delta.detach().numpy(), layer.lora_A.grad.numpy(), layer.lora_B.grad.numpy()]


def _jittor_delta(padded, seed):
    a, b, x, g = _weights(seed)
    layer = jittor_lora.MergedLinear(IN, OUT, r=R, lora_alpha=8)
    layer.lora_A.assign(jt.array(a))
    layer.lora_B.assign(jt.array(b))
    jittor_lora.mixed_precision = (lambda x: padded)
    delta = layer.lora_delta(jt.array(x))
    grads = jt.grad((delta * jt.array(g)).sum(), [layer.lora_A, layer.lora_B])
    return [delta.numpy(), grads[0].numpy(), grads[1].numpy()]


@pytest.fixture(autouse=True)
def restore_switch():
    before = torch_lora.mixed_precision, jittor_lora.mixed_precision
    yield
    torch_lora.mixed_precision, jittor_lora.mixed_precision = before


@pytest.mark.parametrize("delta", [_torch_delta, _jittor_delta], ids=["torch", "jittor"])
def test_padded_form_matches_float32_form(delta):
    exact, padded = delta(False, seed=1), delta(True, seed=1)
    for name, want, got in zip(("delta", "dA", "dB"), exact, padded):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
    e = OUT // 3
    assert np.all(exact[0][..., e:2 * e] == 0) and np.all(padded[0][..., e:2 * e] == 0)  # key third


def _padded_B(side, b):
    """(padded B, gradient of sum(padded B * weights) with respect to lora_B) of either twin."""
    weights = np.random.default_rng(3).normal(size=(2 * R, OUT)).astype(np.float32)
    if side == "torch":
        layer = torch_lora.MergedLinear(IN, OUT, r=R, lora_alpha=8)
        with torch.no_grad():
            layer.lora_B.copy_(torch.from_numpy(b))
        padded = layer.padded_B()
        (padded * torch.from_numpy(weights)).sum().backward()
        return padded.detach().numpy(), layer.lora_B.grad.numpy(), weights
    layer = jittor_lora.MergedLinear(IN, OUT, r=R, lora_alpha=8)
    layer.lora_B.assign(jt.array(b))
    padded = layer.padded_B()
    return padded.numpy(), jt.grad((padded * jt.array(weights)).sum(), layer.lora_B).numpy(), weights


@pytest.mark.parametrize("side", ["torch", "jittor"])
def test_padded_B_layout(side):
    """The block layout (jittor: one gather, torch: concats) and its gradient: each entry of lora_B
    appears once, so its gradient is the weight at its place."""
    b = np.arange(OUT // 3 * 2 * R, dtype=np.float32).reshape(-1, R) + 1
    padded, grad, weights = _padded_B(side, b)
    e = OUT // 3
    want = np.zeros((2 * R, OUT), np.float32)
    want[:R, :e], want[R:, 2 * e:] = b[:e].T, b[e:].T
    np.testing.assert_array_equal(padded, want)
    np.testing.assert_array_equal(grad, np.concatenate([weights[:R, :e].T, weights[R:, 2 * e:].T]))
