"""PPO's value head: one scalar per position read from GPT-2's final hidden states (`v_head`,
as TRL's AutoModelForCausalLMWithValueHead), `v_head.weight` (n_embd, 1) stored (in, out) like
GPT-2's Conv1D and `v_head.bias` (1,). Both backends initialise it from the same seeded numpy
draw, N(0, initializer_range) and zero bias, so twins built alike hold equal weights."""
from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np

from shared.model.checkpoint_files import CheckpointError

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


def split_value_head(state: dict, config, source="<state dict>"):
    """(GPT-2 part, value head) of a state dict holding a value head (keys with or without the
    `module.` prefix that microsoft/LoRA's layout adds; a PPO run's trainer state carries the
    head); the head must be whole and shaped for `config`, since a resumed PPO run needs the
    values it learned."""
    body, head = OrderedDict(), OrderedDict()
    for key, value in state.items():
        bare = key[len("module."):] if key.startswith("module.") else key
        if is_value_head_name(bare):
            head[bare] = np.asarray(value, dtype=np.float32)
        else:
            body[key] = value
    expected = value_head_shapes(config)
    problems = [f"{k} {tuple(np.shape(v))} != {expected[k]}" for k, v in head.items()
                if k in expected and tuple(np.shape(v)) != expected[k]]
    problems += [f"unexpected key {k}" for k in head if k not in expected]
    problems += [f"missing key {k}" for k in expected if k not in head]
    if problems:
        raise CheckpointError(f"{source}: no value head for n_embd {config.n_embd} (a PPO run "
                              f"resumes with the one it saved): " + "; ".join(problems))
    return body, head
