"""The parameter layout of GPT-2 + LoRA, and a seeded initialisation both backends load.

Names follow microsoft/LoRA's `GPT2LMModel.state_dict()` (Hugging Face naming under a
`transformer.` prefix); shapes follow its storage conventions: Conv1D and `c_attn` weights are
(in, out), `lora_A` is (2r, n_embd) and `lora_B` is (2 * n_embd, r) for the query and value
projections. The output head is tied to `transformer.wte.weight` and has no entry of its own.
"""
from __future__ import annotations

import math
import zlib
from collections import OrderedDict

import numpy as np

from shared.model.config import GPT2Config
from shared.model.peft_methods import added_shapes, initial_value, is_added_name, method_of

LORA_MARK = "lora_"


def is_lora_name(name: str) -> bool:
    return LORA_MARK in name.rsplit(".", 1)[-1]


def is_adapter_name(name: str) -> bool:
    """A parameter outside GPT-2's own: LoRA's, or one a PEFT method adds (peft_methods.py)."""
    return is_lora_name(name) or is_added_name(name)


def parameter_shapes(config: GPT2Config) -> "OrderedDict[str, tuple]":
    """Every parameter of the model, in a fixed order, with its shape."""
    e = config.n_embd
    shapes = OrderedDict()
    shapes["transformer.wte.weight"] = (config.vocab_size, e)
    shapes["transformer.wpe.weight"] = (config.n_positions, e)
    for i in range(config.n_layer):
        p, r = f"transformer.h.{i}.", config.lora_dim_of(i)
        shapes[p + "ln_1.weight"] = (e,)
        shapes[p + "ln_1.bias"] = (e,)
        shapes[p + "attn.c_attn.weight"] = (e, 3 * e)
        shapes[p + "attn.c_attn.bias"] = (3 * e,)
        if r > 0:
            shapes[p + "attn.c_attn.lora_A"] = (2 * r, e)
            shapes[p + "attn.c_attn.lora_B"] = (2 * e, r)
        shapes[p + "attn.c_proj.weight"] = (e, e)
        shapes[p + "attn.c_proj.bias"] = (e,)
        shapes[p + "ln_2.weight"] = (e,)
        shapes[p + "ln_2.bias"] = (e,)
        shapes[p + "mlp.c_fc.weight"] = (e, 4 * e)
        shapes[p + "mlp.c_fc.bias"] = (4 * e,)
        shapes[p + "mlp.c_proj.weight"] = (4 * e, e)
        shapes[p + "mlp.c_proj.bias"] = (e,)
    shapes["transformer.ln_f.weight"] = (e,)
    shapes["transformer.ln_f.bias"] = (e,)
    shapes.update(added_shapes(config))  # a PEFT method's own parameters (none by default)
    return shapes


def init_state_dict(config: GPT2Config, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """Initial weights as float32 numpy arrays, identical for a given (config, seed).

    The distributions are the reference's: weights N(0, initializer_range), biases 0, LayerNorm
    1/0, `lora_A` Kaiming-uniform with a=sqrt(5) (uniform in +-1/sqrt(n_embd)), `lora_B` 0.
    Each tensor draws from its own generator seeded by (seed, crc32 of its name), so adding LoRA
    to a config does not change the base weights drawn for the same seed.
    """
    out = OrderedDict()
    for name, shape in parameter_shapes(config).items():
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        leaf = name.rsplit(".", 1)[-1]
        if is_added_name(name):
            value = initial_value(name, shape, rng, config, out)
        elif leaf == "lora_A":
            bound = 1.0 / math.sqrt(shape[1])
            value = rng.uniform(-bound, bound, size=shape)
        elif leaf == "lora_B" or leaf == "bias":
            value = np.zeros(shape)
        elif ".ln_" in name:
            value = np.ones(shape)
        else:
            value = rng.normal(0.0, config.initializer_range, size=shape)
        out[name] = value.astype(np.float32)
    return out


def no_decay(name: str) -> bool:
    """Biases and LayerNorm weights skip weight decay under --no_decay_bias."""
    return name.endswith(".bias") or ".ln_" in name


def optimizer_groups(names, weight_decay, no_decay_bias):
    """[(parameter names, weight decay)] as the reference's `create_grouped_parameters`."""
    if not no_decay_bias:
        return [(list(names), weight_decay)]
    groups = [([n for n in names if not no_decay(n)], weight_decay),
              ([n for n in names if no_decay(n)], 0.0)]
    return [g for g in groups if g[0]]


def trainable_names(config: GPT2Config, names) -> list:
    """Of the model's parameter `names`, those its method trains (peft_methods.py's methods)."""
    method = method_of(config)
    if method == "full":
        return list(names)
    if method == "lora":
        return [n for n in names if is_lora_name(n)]
    if method == "top2":
        last = tuple(f"transformer.h.{i}." for i in range(max(0, config.n_layer - 2), config.n_layer))
        return [n for n in names if n.startswith(last)]
    if method == "bitfit":
        return [n for n in names if n.endswith(".bias")]
    return [n for n in names if is_added_name(n)]


def trains(config: GPT2Config):
    """The predicate `name -> bool` of the parameters the method trains."""
    return lambda name: bool(trainable_names(config, [name]))


def parameter_counts(config: GPT2Config) -> "tuple[int, int]":
    """(trainable, all) parameter counts of a model of `config`, as peft counts them."""
    shapes = parameter_shapes(config)
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    return sum(sizes[n] for n in trainable_names(config, shapes)), sum(sizes.values())
