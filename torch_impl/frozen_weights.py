"""Frozen weights stored once in the compute dtype, for LoRA training under mixed precision.

Under `torch.autocast(bfloat16)` every product casts its float32 weight to bf16 again in every
step: for gpt2.md ~800 copy kernels and 0.7 GB of traffic per step, for weights that never
change. `store_frozen_weights` casts the frozen matrices to bf16 once; the LoRA weights, their
gradients and the optimizer state stay float32, and biases, LayerNorm and the position table
stay float32 too, so the residual stream is float32 as before (a bf16 product plus a float32
bias promotes to float32, as under autocast). The tied output head is stored padded to a
multiple of 128 words (50257 -> 50304): its products then have aligned leading dimensions and
run on the fast GEMM kernels (the unpadded backward ran a slow 'align1' kernel, 4.4 ms per
gpt2.md step); `wte.weight` is a view of the first 50257 rows, so the padding shows in no
output, parameter or checkpoint. The exact float32 values of the frozen weights are kept on the
host, so a checkpoint of all weights is the same as without this.
"""
import torch
from torch import nn

VOCAB_MULTIPLE = 128


def store_frozen_weights(model, dtype):
    """Cast `model`'s frozen matrices to `dtype` in place; return {name: float32 numpy copy}."""
    exact = {}
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            full_name = f"{module_name}.{name}" if module_name else name
            if param.requires_grad or param.ndim != 2 or full_name == "transformer.wpe.weight":
                continue
            exact[full_name] = param.detach().float().cpu().numpy().copy()
            if full_name == "transformer.wte.weight":
                continue
            setattr(module, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
    wte = model.transformer.wte
    vocab, width = wte.weight.shape
    padded_vocab = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    padded = torch.zeros(padded_vocab, width, dtype=dtype, device=wte.weight.device)
    padded[:vocab] = wte.weight.detach()
    wte.weight = nn.Parameter(padded[:vocab], requires_grad=False)  # a view: loads write through
    model.padded_head = padded
    return exact
