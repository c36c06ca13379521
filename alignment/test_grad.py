"""Gradients after one backward pass: every trainable parameter, both backends, LoRA dropout 0.

LoRA-only training (`mark_only_lora_as_trainable`) must give the LoRA weights the same
gradients and the frozen weights none: torch leaves their `.grad` at None, Jittor marks them
stop-grad, returns zeros for them from `jt.grad`, and its optimizer leaves them untouched. Full
fine-tuning must agree on every parameter, including the tied `wte` (embedding + output head).

Tolerances (fp32). Without MKL (the runtime turns it off: it would be downloaded) Jittor's CPU
matmul is a broadcast-multiply-reduce that adds sequentially; the tied output head therefore
sums its backward over the 50257-word vocabulary in 1024-term blocks (jittor_impl/precision.py),
which brings it to torch's level. Each tensor is compared with atol = GRAD_SCALE_TOL x its
largest |gradient| (measured worst on 2 CPU cores: ~6e-6 of scale; ~2e-5 before the blocked
backward). A real error is far larger: Jittor's own nn.log_softmax, which differentiated through
its max shift, was off by ~4e-3 of scale.
"""
import numpy as np
import pytest

from alignment.harness import (DEVICES, build_jittor, build_torch, compare, jittor_grads,
                               jittor_on, seeded_state, tiny_config, torch_grads)
from shared.model.params import is_lora_name

GRAD_SCALE_TOL, GRAD_RTOL = 1e-4, 1e-3
SDPA_ATOL, SDPA_RTOL = 1e-6, 1e-4  # torch against torch: the same reductions on both sides
LOSS_ATOL, LOSS_RTOL = 1e-5, 1e-5
BATCH, LENGTH, LABEL_SMOOTH = 2, 9, 0.1


def batch():
    rng = np.random.default_rng(77)
    ids = rng.integers(0, 50257, size=(BATCH, LENGTH))
    labels = rng.integers(0, 50257, size=(BATCH, LENGTH))
    labels[:, :-1] = ids[:, 1:]  # next-token targets, as in training
    mask = np.ones((BATCH, LENGTH), dtype=np.float32)
    mask[0, :3] = 0.0  # the context part of an example carries no loss
    return ids, labels, mask


def check_grads(label, names, t_grads, j_grads, device):
    for name in names:
        assert t_grads[name] is not None, f"torch: trainable {name} received no gradient"
        assert np.abs(t_grads[name]).max() > 0, f"torch: gradient of {name} is all zero"
        atol = GRAD_SCALE_TOL * float(np.abs(t_grads[name]).max())
        compare(f"{label}/{name}", j_grads[name], t_grads[name], atol, GRAD_RTOL, device)


@pytest.mark.parametrize("device", DEVICES)
def test_lora_only_gradients(device):
    from jittor_impl import lora as jittor_lora
    from torch_impl import lora as torch_lora
    config = tiny_config(4, lora_dropout=0.0)
    state = seeded_state(config, seed=5)
    ids, labels, mask = batch()
    lora_names = [n for n in state if is_lora_name(n)]
    frozen_names = [n for n in state if not is_lora_name(n)]

    t_model = build_torch(config, state, device, attention="math").train()
    torch_lora.mark_only_lora_as_trainable(t_model)
    t_loss, t_grads = torch_grads(t_model, ids, labels, mask, LABEL_SMOOTH, device)
    assert all(t_grads[n] is None for n in frozen_names), \
        [n for n in frozen_names if t_grads[n] is not None]

    with jittor_on(device) as jt:
        j_model = build_jittor(config, state).train()
        jittor_lora.mark_only_lora_as_trainable(j_model)
        params = dict(j_model.named_parameters())
        assert sorted(n for n, p in params.items() if p.requires_grad) == sorted(lora_names)
        j_loss, j_grads = jittor_grads(j_model, ids, labels, mask, LABEL_SMOOTH)
        assert sorted(j_grads) == sorted(lora_names)
        _, frozen_grads = jittor_grads(j_model, ids, labels, mask, LABEL_SMOOTH, names=frozen_names)
        assert all(not np.any(g) for g in frozen_grads.values()), \
            [n for n, g in frozen_grads.items() if np.any(g)]
        # An optimizer step over all parameters moves the LoRA weights only.
        optimizer = jt.optim.SGD(j_model.parameters(), lr=1.0)
        ids_j, labels_j, mask_j = (jt.array(ids), jt.array(labels), jt.array(mask))
        optimizer.step(j_model(ids_j, lm_labels=labels_j, lm_mask=mask_j,
                               label_smooth=LABEL_SMOOTH)[1])
        after = j_model.state_dict_numpy()
    assert all(np.array_equal(after[n], state[n]) for n in frozen_names)
    assert all(not np.array_equal(after[n], state[n]) for n in lora_names)

    compare("grad_loss/lora_only", j_loss, t_loss, LOSS_ATOL, LOSS_RTOL, device)
    check_grads("grad/lora_only", lora_names, t_grads, j_grads, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lora_dim", [0, 4])
def test_full_finetuning_gradients(device, lora_dim):
    config = tiny_config(lora_dim, lora_dropout=0.0)
    state = seeded_state(config, seed=6)
    ids, labels, mask = batch()
    t_model = build_torch(config, state, device, attention="math").train()
    t_loss, t_grads = torch_grads(t_model, ids, labels, mask, LABEL_SMOOTH, device)
    with jittor_on(device):
        j_model = build_jittor(config, state).train()
        j_loss, j_grads = jittor_grads(j_model, ids, labels, mask, LABEL_SMOOTH)
    assert sorted(j_grads) == sorted(state) == sorted(t_grads)
    compare(f"grad_loss/full/lora{lora_dim}", j_loss, t_loss, LOSS_ATOL, LOSS_RTOL, device)
    check_grads(f"grad/full/lora{lora_dim}", list(state), t_grads, j_grads, device)


@pytest.mark.parametrize("device", DEVICES)
def test_sdpa_gradients_equal_math(device):
    """Training in torch uses the fused attention; its gradients equal the reference formula's."""
    config = tiny_config(4, lora_dropout=0.0)
    state = seeded_state(config, seed=7)
    ids, labels, mask = batch()
    grads = {}
    for attention in ("math", "sdpa"):
        model = build_torch(config, state, device, attention=attention).train()
        grads[attention] = torch_grads(model, ids, labels, mask, LABEL_SMOOTH, device)[1]
    for name in state:
        compare(f"grad_sdpa_vs_math/{name}", grads["sdpa"][name], grads["math"][name],
                SDPA_ATOL, SDPA_RTOL, device)


def test_jittor_lora_freezing_survives_eval_and_train():
    """Jittor's eval() stops every gradient and train() restores what eval() recorded: freezing
    a model while it is in eval mode must still hold after train() (as it does in torch)."""
    from jittor_impl import lora as jittor_lora
    config = tiny_config(4)
    model = build_jittor(config, seeded_state(config))  # build_jittor leaves it in eval mode
    jittor_lora.mark_only_lora_as_trainable(model)
    for _ in range(2):
        model.train()
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        assert trainable == sorted(n for n in seeded_state(config) if is_lora_name(n))
        model.eval()
        assert not any(p.requires_grad for _, p in model.named_parameters())
