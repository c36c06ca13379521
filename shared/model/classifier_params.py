"""The classification head's parameters and which weights a classifier run trains.

GPT-2 + classifier (torch_impl/classifier.py, jittor_impl/classifier.py) adds one layer `score`
on the last real token's final hidden state: `score.weight` (n_embd, classes) stored (in, out) like
GPT-2's Conv1D, `score.bias` (classes,). Both backends initialise it from the same seeded numpy
draw, N(0, initializer_range) and zero bias, so twins built alike hold equal weights.

Trainable parts (`--trainable`):
  last  the head, the last transformer block and the final LayerNorm (the source projects' choice)
  all   every weight
  lora  the LoRA matrices and the head (needs --lora_dim > 0)
"""
from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np

from shared.model.params import is_lora_name

HEAD_PREFIX = "score."
TRAINABLE_PARTS = ("last", "all", "lora")


def head_shapes(config, num_classes) -> "OrderedDict[str, tuple]":
    return OrderedDict([("score.weight", (config.n_embd, num_classes)),
                        ("score.bias", (num_classes,))])


def init_head(config, num_classes, seed) -> "OrderedDict[str, np.ndarray]":
    out = OrderedDict()
    for name, shape in head_shapes(config, num_classes).items():
        rng = np.random.default_rng([int(seed), 17, zlib.crc32(name.encode())])
        value = np.zeros(shape) if name.endswith("bias") else \
            rng.normal(0.0, config.initializer_range, size=shape)
        out[name] = value.astype(np.float32)
    return out


def is_head_name(name: str) -> bool:
    return name.startswith(HEAD_PREFIX)


def is_trainable(name: str, part: str, n_layer: int) -> bool:
    """Whether parameter `name` trains under `--trainable part`."""
    if part == "all":
        return True
    if part == "lora":
        return is_head_name(name) or is_lora_name(name)
    if part == "last":
        return (is_head_name(name) or name.startswith("transformer.ln_f.")
                or name.startswith(f"transformer.h.{n_layer - 1}."))
    raise ValueError(f"--trainable must be one of {TRAINABLE_PARTS}, got {part!r}")


# What a pairwise loss cannot train: a shift common to both rewards of a pair cancels in
# r_chosen - r_rejected, so the head's bias and the final LayerNorm's (read only by the head) get
# no gradient but rounding noise, which Adam would blow up to steps of ~lr * 1e-3.
PAIRWISE_INVARIANT = ("score.bias", "transformer.ln_f.bias")


def reward_trains(name: str, part: str, n_layer: int) -> bool:
    """Whether a reward model (one output, pairwise loss) trains `name` under `--trainable part`."""
    return name not in PAIRWISE_INVARIANT and is_trainable(name, part, n_layer)


def split_head(state: dict, config, num_classes, source="<state dict>"):
    """(GPT-2 part, head part) of a classifier state dict; the head's keys checked and may be
    absent (a plain GPT-2 checkpoint initialises a new classifier's body)."""
    body, head = OrderedDict(), OrderedDict()
    for key, value in state.items():
        bare = key[len("module."):] if key.startswith("module.") else key
        (head if is_head_name(bare) else body)[bare if is_head_name(bare) else key] = value
    expected = head_shapes(config, num_classes)
    problems = [f"{k} {tuple(np.shape(v))} != {expected[k]}" for k, v in head.items()
                if k in expected and tuple(np.shape(v)) != expected[k]]
    problems += [f"unexpected key {k}" for k in head if k not in expected]
    if head and set(head) != set(expected):
        problems += [f"missing key {k}" for k in expected if k not in head]
    if problems:
        raise ValueError(f"cannot load the classification head of {source} ({num_classes} "
                         f"classes): " + "; ".join(problems))
    return body, OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in head.items())
