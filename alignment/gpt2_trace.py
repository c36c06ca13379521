"""GPT-2 + LoRA twins for alignment.trace: build both from one numpy state, run them on one batch,
and the float64 reference (the torch twin in float64).

Every parameter is made trainable while tracing (LoRA included), so that a gradient reaches
every submodule's output and input: with only LoRA trainable, the hidden states before the
first LoRA layer carry no gradient in torch. Dropout is off by default (config lora_dropout 0);
with `dropout=p` both twins draw their LoRA dropout masks from one shared.train.dropout.SharedDropout
(step 1), so a port that ignores the shared masks shows up at the LoRA branch.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from shared.model.config import GPT2Config
from shared.train.dropout import SharedDropout

from .trace import trace_module

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
    model.train()  # Jittor's eval() would stop every parameter's gradient
    for _, p in model.named_parameters():
        p.start_grad()
    return model


def call(model, input_ids, labels, mask, label_smooth=0.0):
    return model(input_ids, lm_labels=labels, lm_mask=mask, label_smooth=label_smooth)


@contextlib.contextmanager
def torch_float64_loss():
    """The torch twin's loss casts logits to float32 (right for bf16 training, wrong for a float64
    reference); inside this block it keeps float64. Same formula otherwise."""
    import torch.nn.functional as F

    import torch_impl.model as tm
    original = tm.lm_loss

    def lm_loss(logits, lm_labels, lm_mask=None, label_smooth=0.0):
        flat = logits.reshape(-1, logits.size(-1))
        smoothing = label_smooth if label_smooth > 0.0001 else 0.0
        loss = F.cross_entropy(flat, lm_labels.reshape(-1), ignore_index=-1, reduction="none",
                               label_smoothing=smoothing).view(lm_labels.shape)
        if lm_mask is None:
            lm_mask = loss.new_ones(loss.shape)
        loss = loss * lm_mask
        return loss.sum() / (lm_mask.sum() + 0.0001)
    tm.lm_loss = lm_loss
    try:
        yield
    finally:
        tm.lm_loss = original


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


def trace_gpt2(config: GPT2Config, state: dict, inputs: dict, precision: str = "fp32",
               device: str = "cpu", label_smooth: float = 0.0, jittor_model=None,
               torch_model=None, with_reference: bool = True, dropout: float = 0.0):
    """{"torch": Trace, "jittor": Trace, "float64": Trace or None} for one batch.

    precision "fp32": both twins in float32; "bf16": both under their bf16 autocast (torch's CPU
    autocast, Jittor's precision.autocast). The float64 reference is the torch twin in float64.
    Pass `jittor_model`/`torch_model` to trace prepared (e.g. bug-planted) models."""
    def run(model, **tensors):
        return call(model, **tensors, label_smooth=label_smooth)
    kw = dict(root_outputs=ROOT_OUTPUTS, methods=METHODS, device=device)
    torch_ctx = (lambda: torch_bf16_autocast(device)) if precision == "bf16" else None
    jittor_ctx = jittor_bf16_autocast if precision == "bf16" else None
    tm = torch_model or build_torch(config, state, device=device, dropout=dropout)
    jm = jittor_model or build_jittor(config, state, dropout=dropout)
    out = {"torch": trace_module("torch", tm, inputs, run, context=torch_ctx, **kw),
           "jittor": trace_module("jittor", jm, inputs, run, context=jittor_ctx, **kw),
           "float64": None}
    out["torch"].precision = out["jittor"].precision = precision
    if with_reference:
        ref = build_torch(config, state, dtype="float64", device=device, dropout=dropout)
        out["float64"] = trace_module("torch", ref, inputs, run, dtype="float64",
                                      context=torch_float64_loss, **kw)
    return out


def auto_diff_case(config: GPT2Config, state: dict, inputs: dict):
    """(torch model, Jittor model, inputs, (torch loss, Jittor loss)) for alignment.auto_diff:
    the twins from one state, `inputs` as random_batch gives them; the loss is the masked
    cross-entropy of the logits, written once per framework outside the models (the torch
    twin's own loss casts to float32, which would spoil the float64 reference)."""
    vocab = config.vocab_size
    onehot = np.eye(vocab, dtype=np.float64)[inputs["labels"]] * inputs["mask"][..., None]
    count = float(inputs["mask"].sum())

    def torch_loss(out):
        import torch
        logp = torch.log_softmax(out[0], dim=-1)
        return -(logp * torch.as_tensor(onehot, dtype=logp.dtype)).sum() / count

    def jittor_loss(out):  # vocabulary sums in float64, as jittor_impl's own loss does
        from jittor_impl.runtime import jt
        logp = jt.nn.log_softmax(out[0].float64(), dim=-1)
        return -(logp * jt.array(onehot).cast(logp.dtype)).sum() / count
    return (build_torch(config, state), build_jittor(config, state),
            {"input_ids": inputs["input_ids"]}, (torch_loss, jittor_loss))
