"""Jittor's GELU (jittor_impl/ops.gelu) against torch's tanh GELU, forward and backward, over
the pre-activations where Jittor 1.3.11's own tanh backward returns NaN (|tanh argument| > ~45,
i.e. |x| > ~10.3), which scripts/diff_layers.py found in a trained model."""
import numpy as np
import torch

from jittor_impl.ops import gelu
from jittor_impl.runtime import jt


def test_gelu_gradient_is_finite_and_matches_torch_at_large_inputs():
    x = np.concatenate([np.linspace(-14.0, 14.0, 2001), [-11.7, -10.3, 10.5, -40.0, 40.0]])
    x = x.astype(np.float32)
    xj = jt.array(x)
    yj = gelu(xj)
    gj = jt.grad(yj.sum(), xj).numpy()
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.functional.gelu(xt, approximate="tanh")
    yt.sum().backward()
    assert np.isfinite(gj).all()
    np.testing.assert_allclose(yj.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gj, xt.grad.numpy(), rtol=1e-4, atol=1e-6)
