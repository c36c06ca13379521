"""GPT-2 + LoRA twins for alignment.auto_diff: both built from one numpy state, and how
auto_diff is called on them (`auto_diff_case`), the float64 reference being the torch twin in
float64.

Every parameter is made trainable while tracing (LoRA included), so that a gradient reaches
every submodule's output and input: with only LoRA trainable, the hidden states before the
first LoRA layer carry no gradient in torch. Dropout is off by default (config lora_dropout 0);
with `dropout=p` both twins draw their LoRA dropout masks from one shared.train.dropout.SharedDropout
(step 1), so a port that ignores the shared masks shows up at the LoRA branch.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from shared.model.config import GPT2Config
from shared.train.dropout import SharedDropout

ROOT_OUTPUTS = ("lm_head", "loss")  # the tied head's logits and the loss, computed by the root
METHODS = ("lora_dropout", "lora_delta")  # c_attn's LoRA branch: transformer.h.N.attn.c_attn.lora_delta


def shared_dropout(p: float, seed: int = 0):
    """One backend-neutral mask generator at step 1, or None when dropout is off."""
    if p <= 0:
        return None
    masks = SharedDropout(p, seed)
    masks.set_step(1)
    return masks


def build_torch(config: GPT2Config, state: dict, dtype: str = "float32", device: str = "cpu",
                attention: str = "math", dropout: float = 0.0):
    import torch

    from torch_impl.model import GPT2LMModel
    from torch_impl.lora import set_shared_dropout
    model = GPT2LMModel(dataclasses.replace(config, lora_dropout=dropout))
    model.load_state_numpy(state)
    model.set_attention(attention)
    model.to(device=device, dtype=getattr(torch, dtype)).train(dropout > 0)
    set_shared_dropout(model, shared_dropout(dropout))
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def build_jittor(config: GPT2Config, state: dict, dropout: float = 0.0):
    from jittor_impl.lora import set_shared_dropout
    from jittor_impl.model import GPT2LMModel
    model = GPT2LMModel(dataclasses.replace(config, lora_dropout=dropout))
    set_shared_dropout(model, shared_dropout(dropout))
    model.load_state_numpy(state)
    model.train()  # Jittor's eval() would stop every parameter's gradient (auto_diff restarts them)
    for _, p in model.named_parameters():
        p.start_grad()
    return model


def torch_bf16_autocast(device: str = "cpu"):
    import torch
    return torch.autocast(device, dtype=torch.bfloat16)


def jittor_bf16_autocast():
    from jittor_impl.precision import autocast
    return autocast("bfloat16")


def batch_inputs(batch: dict) -> dict:
    """An FTDataset batch (or any dict with input/target/mask) as trace inputs."""
    return {"input_ids": np.asarray(batch["input"]), "labels": np.asarray(batch["target"]),
            "mask": np.asarray(batch["mask"], dtype=np.float32)}


def random_batch(config: GPT2Config, batch: int = 2, seq: int = 16, seed: int = 0,
                 vocab: int = None) -> dict:
    """Token ids drawn from the first `vocab` ids (all when None), labels = inputs shifted by one,
    a mask that drops the last two positions of the last row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab or config.vocab_size, size=(batch, seq + 1))
    mask = np.ones((batch, seq), dtype=np.float32)
    mask[-1, -2:] = 0.0
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "mask": mask}


def auto_diff_case(config: GPT2Config, state: dict, inputs: dict, label_smooth: float = 0.0,
                   dropout: float = 0.0, precision: str = "fp32", device: str = "cpu",
                   jittor_model=None):
    """(torch model, Jittor model, inputs, options) for
    `alignment.auto_diff(torch_model, jittor_model, inputs, **options)` on one batch (`inputs`
    as random_batch and batch_inputs give them): the twins from one state (`jittor_model`: a
    prepared, e.g. bug-planted, one instead), called as training calls them, so the loss is
    each twin's own (`lm_loss`, the root's second output); LoRA's dropout and branch recorded
    as `...c_attn.lora_dropout` and `...c_attn.lora_delta`; the root's outputs named `lm_head`
    (the tied head's logits) and `loss`; GPT-2's noise-floor factor (alignment.compare's
    K_FP32, or K_BF16 with precision "bf16": both twins under their bf16 autocast). With
    `dropout` both twins draw LoRA's masks from one SharedDropout, in train mode."""
    from .compare import K_BF16, K_FP32
    feed = {"input_ids": np.asarray(inputs["input_ids"]), "lm_labels": np.asarray(inputs["labels"]),
            "lm_mask": np.asarray(inputs["mask"], dtype=np.float32),
            "label_smooth": float(label_smooth)}
    options = dict(loss_fn=lambda out: out[1], train=dropout > 0, methods=METHODS,
                   output_names=ROOT_OUTPUTS, precision=precision,
                   k=K_BF16 if precision == "bf16" else K_FP32)
    if precision == "bf16":
        options["contexts"] = (lambda: torch_bf16_autocast(device), jittor_bf16_autocast)
    return (build_torch(config, state, device=device, dropout=dropout),
            jittor_model or build_jittor(config, state, dropout=dropout), feed, options)
