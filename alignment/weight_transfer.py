"""Copying a PyTorch model's parameters and buffers into its Jittor port, by name and shape.

A port is compared on the original's weights, so every tensor of torch's `state_dict()`
(parameters and persistent buffers: BatchNorm's running statistics too) must land in the Jittor
model's `state_dict()` entry of the same name and shape. What does not match is listed in one
error, every name at once, so a user writes the whole `layer_map` in one go instead of one
failure at a time. `layer_map` renames torch names to Jittor names: a dict whose keys are full
names or module prefixes (`{"features.0": "stem.conv"}` renames `features.0.weight` and
`features.0.bias`), a value None drops a torch tensor on purpose, or a callable
`torch_name -> jittor_name or None`. The same renaming applies to module names, so that the
traces of alignment.auto_diff name the port's modules as torch's.

torch's integer bookkeeping buffers that the port lacks (BatchNorm's `num_batches_tracked`,
which only matters with momentum=None) are skipped and listed, not errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class WeightMismatch(ValueError):
    """The torch model's state and the Jittor port's do not match by name and shape."""


@dataclass
class WeightMap:
    """torch name -> Jittor name for every copied tensor, and the torch names skipped."""
    pairs: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    buffers: list = field(default_factory=list)  # torch names of the copied buffers

    def jittor_name(self, torch_name: str):
        return self.pairs.get(torch_name)

    def torch_name(self, jittor_name: str):
        return {j: t for t, j in self.pairs.items()}.get(jittor_name)


def _renamer(layer_map):
    """torch name -> Jittor name (None: dropped) from `layer_map` (see module doc)."""
    if layer_map is None:
        return lambda name: name
    if callable(layer_map):
        return layer_map

    def rename(name):
        if name in layer_map:
            return layer_map[name]
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest module prefix first
            prefix = ".".join(parts[:cut])
            if prefix in layer_map:
                target = layer_map[prefix]
                if target is None:
                    return None
                return ".".join(([target] if target else []) + parts[cut:])
        return name
    return rename


def plan(torch_model, jittor_model, layer_map=None) -> WeightMap:
    """The name map, or WeightMismatch listing every torch tensor without a Jittor counterpart,
    every Jittor tensor left unassigned and every shape that differs."""
    torch_state = torch_model.state_dict()
    jittor_state = jittor_model.state_dict()
    buffer_names = {n for n, _ in torch_model.named_buffers()}
    rename = _renamer(layer_map)
    result, problems, assigned, claimed = WeightMap(), [], set(), set()
    for name, tensor in torch_state.items():
        target = rename(name)
        if target is None:
            result.skipped.append(name)
            continue
        if target not in jittor_state:
            if name in buffer_names and not tensor.is_floating_point():
                result.skipped.append(name)  # an integer counter the port does not keep
                continue
            problems.append(f"torch {name} {list(tensor.shape)}: no Jittor tensor {target!r}")
            continue
        shape = list(jittor_state[target].shape)
        if shape != list(tensor.shape):
            problems.append(f"torch {name} {list(tensor.shape)} vs Jittor {target} {shape}: shapes differ")
            claimed.add(target)
            continue
        if target in assigned:
            problems.append(f"Jittor {target} is the target of two torch tensors")
            continue
        assigned.add(target)
        result.pairs[name] = target
        if name in buffer_names:
            result.buffers.append(name)
    for target, var in jittor_state.items():
        if target not in assigned | claimed and str(var.dtype).startswith("float"):
            problems.append(f"Jittor {target} {list(var.shape)}: nothing in torch maps to it")
    if problems:
        raise WeightMismatch(f"the torch model and its Jittor port do not match ({len(problems)} "
                             "problems; name them in layer_map):\n  " + "\n  ".join(problems))
    return result


def module_names(torch_model, layer_map=None) -> dict:
    """{Jittor module name: torch module name} where `layer_map` renames a module (its prefix
    rule applies to module names as to tensor names), so the two traces name modules alike."""
    rename = _renamer(layer_map)
    out = {}
    for name, _ in torch_model.named_modules():
        target = rename(name) if name else None
        if target and target != name:
            out[target] = name
    return out


def assign_weights(torch_model, jittor_model, layer_map=None) -> WeightMap:
    """Copy every torch parameter and buffer into the Jittor model (see module doc); each Jittor
    tensor keeps its dtype and whether it is trainable. Returns the name map."""
    mapping = plan(torch_model, jittor_model, layer_map)
    torch_state = torch_model.state_dict()
    jittor_state = jittor_model.state_dict()
    for name, target in mapping.pairs.items():
        var = jittor_state[target]
        frozen = var.is_stop_grad()
        value = torch_state[name].detach().cpu().double().numpy()
        var.assign(value.astype(np.dtype(str(var.dtype))))
        if frozen:
            var.stop_grad()
        else:
            var.start_grad()
    return mapping
