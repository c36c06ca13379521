"""Frozen weights stored in bf16 (torch_impl/frozen_weights.py) change no parameter name, shape
or saved value, and the padded output head follows every load (CPU; on the GPU the backends
apply it under mixed precision, tests/test_speed_paths.py)."""
from types import SimpleNamespace

import numpy as np
import torch

from shared.model.config import GPT2Config
from alignment.harness import randomize_lora_B
from shared.model.params import init_state_dict
from torch_impl.frozen_weights import store_frozen_weights
from torch_impl.train import TorchBackend

CONFIG = GPT2Config(vocab_size=1001, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                    lora_attn_dim=4, lora_attn_alpha=32, lora_dropout=0.0)


def test_exact_values_unpadded_shapes_and_loads_write_through():
    args = SimpleNamespace(device="cpu", precision="fp32", random_seed=0, init_checkpoint=None,
                           shared_dropout=False, attn=None, lr=1e-3, compile=False,
                           adam_beta1=0.9, adam_beta2=0.999, adam_epislon=1e-6,
                           weight_decay=0.0, no_decay_bias=False, correct_bias=True)
    backend = TorchBackend(CONFIG, args)
    backend.exact_frozen = store_frozen_weights(backend.model, torch.bfloat16)
    model = backend.model
    assert model.padded_head.shape == (1024, 32) and model.transformer.wte.weight.shape == (1001, 32)
    assert model.transformer.h[1].attn.c_proj.weight.dtype == torch.bfloat16
    assert model.transformer.wpe.weight.dtype == torch.float32  # the residual stream stays fp32
    state = randomize_lora_B(init_state_dict(CONFIG, 5), 5)  # new weights after the cast
    backend.load_trainable(state)
    saved = backend.state_numpy(lora_only=False)
    assert sorted(saved) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    head = model.padded_head.float().numpy()
    loaded = torch.from_numpy(state["transformer.wte.weight"]).bfloat16().float().numpy()
    np.testing.assert_array_equal(head[:1001], loaded)  # the head holds the new, not the old, rows
    assert not head[1001:].any()  # the padding rows stay zero
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 1001, (2, 9)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(ids)
    assert logits.shape == (2, 9, 1001)


def test_jittor_padded_head_follows_loads_and_hides_its_padding():
    """The Jittor twin's padded head is a copy (no views): made again on loads, never a parameter
    or a saved weight, zero in its padding, and the logits keep the vocabulary's width."""
    from jittor_impl import frozen_weights as jittor_frozen
    from jittor_impl.runtime import jt
    from jittor_impl.train import JittorBackend
    args = SimpleNamespace(device="cpu", precision="fp32", random_seed=0, init_checkpoint=None,
                           shared_dropout=False, attn=None, lr=1e-3, compile=False,
                           adam_beta1=0.9, adam_beta2=0.999, adam_epislon=1e-6,
                           weight_decay=0.0, no_decay_bias=False, correct_bias=True)
    backend = JittorBackend(CONFIG, args)
    backend.exact_frozen = jittor_frozen.store_frozen_weights(backend.model, "bfloat16")
    model = backend.model
    assert list(model.padded_head.shape) == [1024, 32] and list(model.transformer.wte.weight.shape) == [1001, 32]
    assert "padded_head" not in dict(model.named_parameters())
    state = randomize_lora_B(init_state_dict(CONFIG, 5), 5)  # new weights after the cast
    backend.load_trainable(state)
    saved = backend.state_numpy(lora_only=False)
    assert sorted(saved) == sorted(state)
    head = model.padded_head.float32().numpy()
    loaded = model.transformer.wte.weight.float32().numpy()
    np.testing.assert_array_equal(loaded, jt.array(state["transformer.wte.weight"]).cast("bfloat16").float32().numpy())
    np.testing.assert_array_equal(head[:1001], loaded)  # the head holds the new, not the old, rows
    assert not head[1001:].any()  # the padding rows stay zero
    ids = np.random.default_rng(0).integers(0, 1001, (2, 9))
    with jt.no_grad(), backend.autocast():
        logits, _ = model(jt.array(ids))
        model.padded_head = None
        unpadded, _ = model(jt.array(ids))
    assert list(logits.shape) == [2, 9, 1001]
    # the same products over more rows (float32 sums in another blocking)
    np.testing.assert_allclose(logits.float32().numpy(), unpadded.float32().numpy(), rtol=1e-5, atol=1e-6)
