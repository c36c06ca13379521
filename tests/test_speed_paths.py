"""The torch twin's mixed-precision fast paths on a GPU (torch_impl/frozen_weights.py,
cross_entropy.py, fused_optim.py as used by TorchBackend): same function as the plain autocast
path within bf16 error, the vocabulary padding invisible, no host sync inside a step."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shared.model.config import GPT2Config
from alignment.harness import randomize_lora_B
from shared.model.params import init_state_dict

pytestmark = pytest.mark.gpu
CONFIG = GPT2Config(vocab_size=1001, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                    lora_attn_dim=4, lora_attn_alpha=32, lora_dropout=0.0)


def _args(precision):
    return SimpleNamespace(device="cuda", precision=precision, random_seed=0, init_checkpoint=None,
                           shared_dropout=False, attn=None, lr=1e-3, compile=False,
                           adam_beta1=0.9, adam_beta2=0.999, adam_epislon=1e-6, weight_decay=0.01,
                           no_decay_bias=False, correct_bias=True)


def _backend(precision):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from torch_impl.train import TorchBackend
    backend = TorchBackend(CONFIG, _args(precision))
    state = randomize_lora_B(init_state_dict(CONFIG, 3), 3)
    backend.load_trainable(state)
    return backend, state


def _batch():
    rng = np.random.default_rng(0)
    return {"input": rng.integers(0, CONFIG.vocab_size, (2, 64)),
            "target": rng.integers(0, CONFIG.vocab_size, (2, 64)),
            "mask": (rng.random((2, 64)) > 0.2).astype(np.float32)}


def test_padding_and_bf16_storage_are_invisible():
    backend, state = _backend("bf16")
    assert backend.model.padded_head.shape[0] % 128 == 0
    assert backend.model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    assert backend.model.transformer.h[0].attn.c_attn.lora_A.dtype == torch.float32
    saved = backend.state_numpy(lora_only=False)
    assert sorted(saved) == sorted(state)
    for name, value in state.items():  # exact float32 values, unpadded shapes
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    with torch.no_grad(), backend.autocast():
        logits, _ = backend.model(torch.from_numpy(_batch()["input"]).cuda())
    assert logits.shape[-1] == CONFIG.vocab_size


def test_bf16_step_matches_plain_autocast_and_never_syncs():
    fast, _ = _backend("bf16")
    plain, _ = _backend("fp32")  # float32 storage, run under the same autocast below
    plain.autocast_dtype = torch.bfloat16
    batch = _batch()
    fast.set_step(1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside the step raises
    try:
        loss_fast = fast.forward_backward(batch, 1.0, 0.1)
        fast.update(1e-3, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    plain.set_step(1)
    loss_plain = plain.forward_backward(batch, 1.0, 0.1)
    grads_plain = {n: p.grad.clone() for n, p in plain.params.items()}
    fast2, _ = _backend("bf16")  # the first one's gradients were used and cleared by update
    fast2.set_step(1)
    fast2.forward_backward(batch, 1.0, 0.1)
    grads_fast = {n: p.grad for n, p in fast2.params.items()}
    assert abs(loss_fast.item() - loss_plain.item()) <= 2e-2 * abs(loss_plain.item())
    for name, g in grads_plain.items():
        err = (grads_fast[name].float() - g).norm() / (g.norm() + 1e-12)
        assert err < 5e-2, (name, float(err))
