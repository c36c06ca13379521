"""PPO's value head: one scalar per position read from GPT-2's final hidden states (`v_head`,
as TRL's AutoModelForCausalLMWithValueHead), `v_head.weight` (n_embd, 1) stored (in, out) like
GPT-2's Conv1D and `v_head.bias` (1,). Both backends initialise it from the same seeded numpy
draw, N(0, initializer_range) and zero bias, so twins built alike hold equal weights."""
from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np

VALUE_HEAD_PREFIX = "v_head."


def value_head_shapes(config) -> "OrderedDict[str, tuple]":
    return OrderedDict([("v_head.weight", (config.n_embd, 1)), ("v_head.bias", (1,))])


def init_value_head(config, seed) -> "OrderedDict[str, np.ndarray]":
    out = OrderedDict()
    for name, shape in value_head_shapes(config).items():
        rng = np.random.default_rng([int(seed), 23, zlib.crc32(name.encode())])
        value = np.zeros(shape) if name.endswith("bias") else \
            rng.normal(0.0, config.initializer_range, size=shape)
        out[name] = value.astype(np.float32)
    return out


def is_value_head_name(name: str) -> bool:
    return name.startswith(VALUE_HEAD_PREFIX)
