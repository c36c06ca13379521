"""The foreach AdamW and clipping (torch_impl/fused_optim.py) against the reference loop."""
import numpy as np
import pytest
import torch

from torch_impl.fused_optim import ForeachAdamW, foreach_grad_norm_and_clip
from torch_impl.optim import AdamW, grad_norm_and_clip


def _params(rng, shapes):
    return [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s).astype(np.float32)))
            for s in shapes]


@pytest.mark.parametrize("correct_bias,weight_decay,clip", [(True, 0.01, 1.0), (False, 0.0, 0.0),
                                                             (True, 0.1, 1e-3)])
def test_foreach_adamw_equals_reference(correct_bias, weight_decay, clip):
    rng = np.random.default_rng(0)
    shapes = [(8, 96), (192, 4), (8, 96), (7,)]
    ref, fast = _params(rng, shapes), None
    fast = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay,
              correct_bias=correct_bias)
    ref_groups = [{"params": ref[:2]}, {"params": ref[2:], "weight_decay": 0.0}]
    fast_groups = [{"params": fast[:2]}, {"params": fast[2:], "weight_decay": 0.0}]
    opt_ref, opt_fast = AdamW(ref_groups, **kw), ForeachAdamW(fast_groups, **kw)
    for step in range(6):
        grads = [rng.standard_normal(s).astype(np.float32) * 10 for s in shapes]
        for p, q, g in zip(ref, fast, grads):
            p.grad, q.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
        if step == 3:
            ref[1].grad = fast[1].grad = None  # a tensor without a gradient is skipped
        n_ref = grad_norm_and_clip(opt_ref, clip)
        n_fast = foreach_grad_norm_and_clip(opt_fast, clip)
        np.testing.assert_allclose(n_fast.item(), n_ref.item(), rtol=1e-6)
        opt_ref.step()
        opt_fast.step()
        for p, q in zip(ref, fast):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-6, atol=1e-7)
    for p, q in zip(ref, fast):  # same state layout: checkpoints do not change
        s_ref, s_fast = opt_ref.state[p], opt_fast.state[q]
        assert s_ref["step"] == s_fast["step"]
        np.testing.assert_allclose(s_fast["exp_avg_sq"].numpy(), s_ref["exp_avg_sq"].numpy(), rtol=1e-6)
