"""Checkpoint I/O for both backends: read any supported layout, check it, write atomically.

Weights travel between the backends as numpy arrays under canonical names (see `params.py`).
Readable layouts:
- Hugging Face GPT-2: `pytorch_model.bin` or `model.safetensors`, keys with or without a
  `transformer.` prefix, with or without the `attn.bias`/`attn.masked_bias` buffers, old
  TF-style `.g/.b/.w` names, a tied `lm_head.weight`;
- microsoft/LoRA fine-tuned: `{'model_state_dict': ...}` with `module.transformer.` (DDP) or
  `transformer.` keys, full or LoRA-only;
- this project's backend-neutral files: `.safetensors` or `.npz` under canonical names, and
  Jittor's pickled `.pkl` state dicts;
- folders: transformers' (config.json + weights, sharded too) and OpenAI's TF GPT-2 checkpoints
  (pretrained.py, whose configs give the model's shape).
Nothing is loaded half-way: missing, unexpected and mis-shaped keys are reported together.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from collections import OrderedDict

import numpy as np

from shared.runtime.atomic import atomic_path
from shared.model.config import GPT2Config
from shared.model.lora_settings import (LORA_CONFIG_KEY, encode_for_npz, encode_for_safetensors,
                                        mismatch, read_lora_settings)
from shared.model.checkpoint_files import CheckpointError, weights_location
from shared.model.params import is_adapter_name, is_lora_name, parameter_shapes, trainable_names
from shared.model.peft_methods import PEFT_CONFIG_KEY, method_of, read_peft_settings, record_json
from shared.model.pretrained import ConfigFileError, read_config_json, read_openai_tf

# Keys that hold no parameter of their own: causal-mask buffers and the tied output head.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_HEAD_KEYS = ("lm_head.weight", "lm_head.decoder.weight")
_TF_SUFFIXES = {".g": ".weight", ".b": ".bias", ".w": ".weight"}
_PREFIXES = ("module.transformer.", "module.", "transformer.")
_LIST_LIMIT = 12


# ----------------------------------------------------------------------------------- reading
def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        return (value.float() if value.dtype.is_floating_point else value).numpy()
    if hasattr(value, "numpy"):  # a jittor Var
        return value.numpy()
    return None


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Reads Jittor's pickled state dicts as numpy arrays and nothing else.

    `jittor.Module.save` pickles `{name: jittor Var}`, each Var rebuilt from a numpy array. A
    plain pickle.load would import jittor behind the runtime's back (jittor_impl.runtime sets
    its offline switches first) and would run whatever code a hostile file names. Here a Var
    becomes its array, and any global outside numpy's array rebuilding is refused.
    """

    _NUMPY_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")} | {
        (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) == ("jittor", "jittor_core.Var"):
            return np.asarray
        if (module, name) in self._NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a .pkl checkpoint may "
                                     f"hold only arrays (jittor Module.save writes that)")


def read_checkpoint(path) -> "OrderedDict[str, np.ndarray]":
    """Load a checkpoint into a flat {key: numpy array} dict with its keys untouched: a file, or
    a transformers / OpenAI TF folder (or a TF prefix): see pretrained.py."""
    from shared.model.tf_checkpoint import TFCheckpointError
    kind, path = weights_location(os.fspath(path))
    if kind == "sharded":
        return read_sharded(path)
    ext = os.path.splitext(path)[1].lower()
    try:
        if kind == "tf":
            raw = read_openai_tf(path)
        elif ext == ".safetensors":
            from safetensors.numpy import load_file
            raw = load_file(path)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as npz:  # without its settings records
                raw = {k: npz[k] for k in npz.files if k not in (LORA_CONFIG_KEY, PEFT_CONFIG_KEY)}
        elif ext == ".pkl":
            with open(path, "rb") as f:
                raw = _ArraysOnlyUnpickler(f).load()
        else:  # .bin / .pt / .pth and anything torch.save wrote
            import torch
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except TFCheckpointError as exc:  # names the file and tensor already
        raise CheckpointError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - parsers of damaged files raise anything
        # (IndexError from torch's unpickler, SafetensorError, BadZipFile, EOFError, ...)
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") \
            from exc
    return flatten_state_dict(raw, source=path)


def read_sharded(index_path):
    """transformers' sharded weights: {"weight_map": {key: shard file}} next to the shards."""
    data = read_config_json(index_path)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigFileError(f"{index_path}: key 'weight_map' missing or not an object")
    folder, out = os.path.dirname(index_path), OrderedDict()
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str):
            raise ConfigFileError(f"{index_path}: key 'weight_map' names a shard {shard!r}")
        out.update(read_checkpoint(os.path.join(folder, shard)))
    return out


def flatten_state_dict(raw, source="<state dict>") -> "OrderedDict[str, np.ndarray]":
    """Unwrap `{'model_state_dict': ...}` and turn every tensor into a numpy array."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(raw).__name__}")
    if "model_state_dict" in raw:
        raw = raw["model_state_dict"]
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source}: 'model_state_dict' is not a dict")
    out = OrderedDict()
    for key, value in raw.items():
        array = _to_numpy(value)
        if array is None:
            raise CheckpointError(f"{source}: key {key!r} holds a {type(value).__name__}, "
                                  f"not a tensor")
        out[str(key)] = array
    return out


def canonical_key(key: str):
    """Map a key of any supported layout to its canonical name; None for keys that hold no
    parameter (mask buffers); 'lm_head' for the tied output head."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    if key in _HEAD_KEYS:
        return "lm_head"
    if key.endswith(_BUFFER_SUFFIXES):
        return None
    for old, new in _TF_SUFFIXES.items():
        if key.endswith(old):
            key = key[: -len(old)] + new
            break
    return "transformer." + key


def normalize_state_dict(raw: dict, source="<state dict>") -> "OrderedDict[str, np.ndarray]":
    """Canonical names, buffers dropped, the tied head checked against `wte` and dropped."""
    flat = flatten_state_dict(raw, source)
    out, origin, head = OrderedDict(), {}, None
    for key, value in flat.items():
        name = canonical_key(key)
        if name is None:
            continue
        if name == "lm_head":
            head = (key, value)
            continue
        if name in out:
            raise CheckpointError(f"{source}: keys {origin[name]!r} and {key!r} both map to "
                                  f"parameter {name!r}")
        out[name], origin[name] = value, key
    if head is not None:
        wte = out.get("transformer.wte.weight")
        if wte is None:
            raise CheckpointError(f"{source}: has an output head {head[0]!r} but no token "
                                  f"embedding wte.weight to tie it to")
        if wte.shape != head[1].shape or not np.array_equal(wte, head[1]):
            raise CheckpointError(f"{source}: output head {head[0]!r} differs from wte.weight; "
                                  f"GPT-2 ties them and an untied head cannot be loaded")
    return out


# ---------------------------------------------------------------------------------- matching
def _listing(title, items):
    items = list(items)
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f" (+{len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    return f"  {title} ({len(items)}): {shown}{more}"


def match_state_dict(state: dict, config: GPT2Config, base_loaded: bool = False,
                     source="<state dict>") -> "OrderedDict[str, np.ndarray]":
    """Check a canonical state dict against the model's parameters and return what to load.

    Accepted: the full base (with or without LoRA weights; absent LoRA weights keep their
    current values) or LoRA weights alone on a model whose base is already loaded; the same for
    the weights a PEFT method adds, and for --peft top2/bitfit exactly the weights they train.
    """
    expected = parameter_shapes(config)
    if base_loaded and method_of(config) in ("top2", "bitfit") \
            and set(state) == set(trainable_names(config, expected)):
        expected = OrderedDict((n, expected[n]) for n in state)  # their resume checkpoints
    base_names = [n for n in expected if not is_adapter_name(n)]
    lora_names = [n for n in expected if is_adapter_name(n)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in state
                 if k in expected and tuple(state[k].shape) != expected[k]]
    have_base = [n for n in base_names if n in state]
    have_lora = [n for n in lora_names if n in state]
    problems, hints = [], []
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
        if config.lora_attn_dim == 0 and any(is_lora_name(k) for k in unexpected):
            hints.append("the checkpoint holds LoRA weights but the model has lora_dim 0: "
                         "set --lora_dim to the rank it was trained with")
    if misshaped:
        problems.append(_listing("mis-shaped keys (found != expected)", misshaped))
        if any(is_lora_name(m) for m in misshaped):
            hints.append("LoRA shapes differ: check --lora_dim")
        if any(not is_lora_name(m) for m in misshaped):
            hints.append(f"base shapes differ: check --model_card / --n_embd/--n_layer/--n_head "
                         f"(model has n_embd={config.n_embd}, n_layer={config.n_layer})")
    if have_base and len(have_base) < len(base_names):
        problems.append(_listing("missing keys", [n for n in base_names if n not in state]))
    if have_lora and len(have_lora) < len(lora_names):
        kind = "LoRA" if all(is_lora_name(n) for n in lora_names) else "adapter"
        problems.append(_listing(f"missing {kind} keys", [n for n in lora_names if n not in state]))
    if not have_base and not have_lora and not problems:
        problems.append("  no GPT-2 parameter found (keys: "
                        + ", ".join(list(state)[:_LIST_LIMIT]) + ")")
    if not have_base and have_lora and not base_loaded:
        kind = "LoRA" if all(is_lora_name(n) for n in have_lora) else "adapter"
        problems.append(f"  it holds {kind} weights only: load a base checkpoint first "
                        "(--init_checkpoint BASE with --lora_checkpoint THIS in the scripts)")
    if problems:  # one line: the scripts print it as their one error line
        parts = [p.strip() for p in problems] + [f"hint: {h}" for h in hints]
        raise CheckpointError(f"cannot load {source} into GPT-2 (n_embd={config.n_embd}, "
                              f"n_layer={config.n_layer}, lora_dim={config.lora_attn_dim}): "
                              + "; ".join(parts))
    return OrderedDict((k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items())


def load_for_model(source, config: GPT2Config, base_loaded: bool = False, name=None):
    """Path or state dict -> checked canonical {name: float32 array} ready to assign. `name`:
    the file a state dict was read from, for the error messages."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        raw = read_checkpoint(name)
        settings = read_lora_settings(name)
        problem = settings and config.lora_attn_dim > 0 and mismatch(settings, config, name)
        if problem:  # LoRA weights trained with other settings would load and compute wrong
            raise CheckpointError(f"cannot load {name}: {problem}")
        problem = method_problem(name, settings, config)
        if problem:
            raise CheckpointError(problem)
    else:
        name, raw = name or "<state dict>", source
    return match_state_dict(normalize_state_dict(raw, name), config, base_loaded, name)


def method_problem(path, lora_settings, config) -> "str | None":
    """A checkpoint trained with another PEFT method (its stored record) than the model's, as one
    line naming both; None when they agree or the file names no method (a base model)."""
    stored = read_peft_settings(path)
    theirs = stored.method if stored is not None else ("lora" if lora_settings else None)
    ours = method_of(config)
    if theirs is None or theirs == ours or (theirs, ours) == ("lora", "full"):
        if stored is None or config.peft is None or stored.to_record() == config.peft.to_record():
            return None
        return (f"cannot load {path}: it was trained with {record_json(stored)}, the model "
                f"has {record_json(config.peft)}")
    return (f"cannot load {path}: it holds --peft {theirs} weights, but the model is built "
            f"for --peft {ours}")


# ----------------------------------------------------------------------------------- writing
def save_checkpoint(path, state: dict, layout: str = "auto", lora_settings: dict = None,
                    peft_settings=None):
    """Write canonical numpy weights atomically.

    layout 'lora' (the default for .pt/.bin) is microsoft/LoRA's: `{'model_state_dict': ...}`
    with `module.transformer.` keys as its DDP training writes them, loadable by its
    `load_weight`; 'neutral' (the default for .safetensors/.npz) keeps canonical names.
    `lora_settings` (shared/model/lora_settings.py, e.g. `settings_from_config(config)`) is stored
    with the weights when they hold LoRA weights, so that the file names its own rank and alpha;
    `peft_settings` (peft_methods.PeftSettings) is stored as the `peft_config` record likewise.
    """
    path = os.fspath(path)
    if not any(is_lora_name(k) for k in state):
        lora_settings = None  # a base model: no LoRA settings to carry
    ext = os.path.splitext(path)[1].lower()
    if layout == "auto":
        layout = "lora" if ext in (".pt", ".bin", ".pth") else "neutral"
    arrays = OrderedDict((k, np.ascontiguousarray(v)) for k, v in state.items())
    with atomic_path(path) as tmp:
        if layout == "lora":
            import torch
            saved = {"model_state_dict": OrderedDict(
                ("module." + k, torch.from_numpy(v.copy())) for k, v in arrays.items())}
            if lora_settings:
                saved[LORA_CONFIG_KEY] = dict(lora_settings)
            if peft_settings is not None:
                saved[PEFT_CONFIG_KEY] = peft_settings.to_record()
            torch.save(saved, tmp)
        elif ext == ".safetensors":
            from safetensors.numpy import save_file
            metadata = encode_for_safetensors(lora_settings) if lora_settings else {}
            if peft_settings is not None:
                metadata[PEFT_CONFIG_KEY] = record_json(peft_settings)
            save_file(dict(arrays), tmp, metadata=metadata or None)
        elif ext == ".npz":
            if lora_settings:
                arrays[LORA_CONFIG_KEY] = encode_for_npz(lora_settings)
            if peft_settings is not None:
                arrays[PEFT_CONFIG_KEY] = np.frombuffer(record_json(peft_settings).encode(),
                                                        dtype=np.uint8)
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            raise ValueError(f"cannot write {path}: use .safetensors, .npz, .pt or .bin")
    return path


# ------------------------------------------------------------------------- trainer state
def save_trainer_state(path, meta: dict, optimizer_state: dict):
    """What resuming needs besides the weights: `meta` (JSON) and the optimizer's arrays."""
    arrays = {f"optim/{k}": np.asarray(v) for k, v in optimizer_state.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_trainer_state(path):
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            optim = {k[len("optim/"):]: npz[k] for k in npz.files if k.startswith("optim/")}
    except Exception as exc:  # noqa: BLE001 - a damaged zip raises BadZipFile, EOFError, KeyError...
        step = re.search(r"(\d+)\.npz$", os.fspath(path))
        raise CheckpointError(
            f"cannot read {path} ({type(exc).__name__}: {exc}); it is damaged: delete it"
            + (f" and model.{step.group(1)}.pt" if step else "")
            + " to resume from the checkpoint before") from exc
    return meta, optim
