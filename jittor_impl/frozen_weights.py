"""Frozen weights stored once in the compute dtype, for LoRA training under mixed precision
(twin: torch_impl/frozen_weights.py).

`precision.matmul` casts both operands of every product to bf16; for frozen float32 weights
that is a cast kernel per weight per step (part of the ~750 cast kernels, 22 ms, of a gpt2.md
step on an H100) for values that never change. `store_frozen_weights` casts the frozen matrices
once (a cast to the dtype a variable already has is no kernel in Jittor); the LoRA weights,
their gradients and the optimizer state stay float32, and biases, LayerNorm and the position
table stay float32, so the residual stream is float32 as before. The exact float32 values are
kept on the host, so a checkpoint of all weights is the same as without this. The tied output
head gets a copy padded to a multiple of 128 words (50257 -> 50304), as in the torch twin: its
products then run on the fast GEMM kernels (unpadded, cuBLAS took sm75 'align1' kernels, 7.5 ms of
the 41 ms a gpt2.md step keeps the H200 busy, logs/gpu-benchmark/jfast23c-2026-12-03). Jittor has
no views, so the copy is separate from `wte.weight` (which the embedding reads): `refresh_padded_head`
copies it again after a load.
"""
from .runtime import jt

VOCAB_MULTIPLE = 128


def store_frozen_weights(model, dtype):
    """Cast `model`'s frozen matrices to `dtype`; return {name: float32 numpy copy}."""
    exact = {}
    for module_name, module in model.named_modules():
        for name, value in list(vars(module).items()):
            full_name = f"{module_name}.{name}" if module_name else name
            if (not isinstance(value, jt.Var) or value.requires_grad or value.ndim != 2
                    or full_name == "transformer.wpe.weight"):
                continue
            exact[full_name] = value.float32().numpy().copy()
            setattr(module, name, value.cast(dtype).stop_grad())
    if hasattr(model, "padded_head"):  # a language model's tied head (not a classifier's)
        refresh_padded_head(model)
    jt.sync_all()
    return exact


def refresh_padded_head(model):
    """`model.padded_head` = its (tied) `wte.weight` in rows padded with zeros to a multiple of
    VOCAB_MULTIPLE, in the weight's type; model.py's head product reads it."""
    weight = model.transformer.wte.weight
    vocab, width = weight.shape
    pad = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE - vocab
    padded = jt.concat([weight, jt.zeros((pad, width), dtype=weight.dtype)]).stop_grad()
    padded.persistent = False  # no parameter: Jittor lists every Var attribute of a module as one
    padded.sync()
    model.padded_head = padded
