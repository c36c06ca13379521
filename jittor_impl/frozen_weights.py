"""Frozen weights stored once in the compute dtype, for LoRA training under mixed precision
(twin: torch_impl/frozen_weights.py).

`precision.matmul` casts both operands of every product to bf16; for frozen float32 weights
that is a cast kernel per weight per step (part of the ~750 cast kernels, 22 ms, of a gpt2.md
step on an H100) for values that never change. `store_frozen_weights` casts the frozen matrices
once (a cast to the dtype a variable already has is no kernel in Jittor); the LoRA weights,
their gradients and the optimizer state stay float32, and biases, LayerNorm and the position
table stay float32, so the residual stream is float32 as before. The exact float32 values are
kept on the host, so a checkpoint of all weights is the same as without this. Unlike the torch
twin, the output head is not padded: Jittor has no views to hide the padding behind.
"""
from .runtime import jt


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
    jt.sync_all()
    return exact
