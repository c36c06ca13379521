"""The blocked low-precision cross-entropy (torch_impl/cross_entropy.py) against torch's own."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torch_impl import cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_float32_cross_entropy(monkeypatch, smoothing):
    monkeypatch.setattr(cross_entropy, "ROWS_PER_BLOCK", 7)  # several blocks, a ragged last one
    rng = np.random.default_rng(1)
    rows, vocab = 30, 301
    logits = torch.from_numpy(rng.standard_normal((rows, vocab)).astype(np.float32) * 4).bfloat16()
    labels = torch.from_numpy(rng.integers(0, vocab, rows))
    labels[[3, 17]] = -1  # ignored rows
    weights = torch.from_numpy(rng.random(rows).astype(np.float32))
    ours = logits.clone().requires_grad_()
    loss = cross_entropy.low_precision_cross_entropy(ours, labels, smoothing)
    (loss * weights).sum().backward()
    ref = logits.float().requires_grad_()
    ref_loss = F.cross_entropy(ref, labels, ignore_index=-1, reduction="none", label_smoothing=smoothing)
    (ref_loss * weights).sum().backward()
    assert loss.dtype == torch.float32 and ours.grad.dtype == torch.bfloat16
    np.testing.assert_allclose(loss.detach().numpy(), ref_loss.detach().numpy(), rtol=1e-6, atol=1e-5)
    assert float(loss.detach()[3]) == 0.0 and float(ours.grad[17].abs().max()) == 0.0
    # the gradient differs from the float32 reference only by its rounding to bfloat16
    np.testing.assert_allclose(ours.grad.float().numpy(), ref.grad.numpy(), rtol=2 ** -8, atol=1e-7)
