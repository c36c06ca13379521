"""The LoRA settings a checkpoint was trained with, stored in the checkpoint itself.

A checkpoint that holds LoRA weights carries one JSON record, `lora_config`:
  {"lora_dim": 4, "lora_alpha": 32.0, "lora_targets": ["c_attn.query", "c_attn.value"],
   "lora_dropout": 0.1}
plus `lora_layer_dims` / `lora_layer_alphas` (one entry per layer) when the layers differ (an
imported peft adapter with rank_pattern, alpha_pattern or layers_to_transform). Where it lives:
- `.pt`/`.bin` (microsoft/LoRA layout): a top-level key beside `model_state_dict`, a plain dict
  (microsoft/LoRA's `load_weight` reads `model_state_dict` only, and so ignores it);
- `.safetensors`: the header's `__metadata__` (string -> string), key `lora_config`, JSON;
- `.npz`: an array `lora_config` holding the JSON's UTF-8 bytes.
Readers take --lora_dim/--lora_alpha from it when the flag is not given and refuse a flag that
disagrees, naming both values and the file; files without the record (microsoft/LoRA's, Hugging
Face's, older ones of this project) keep working from the flags as before. No backend imported.
"""
from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np

from shared.model.checkpoint_files import latest_checkpoint_step, weights_location

LORA_CONFIG_KEY = "lora_config"
# This project's LoRA adapts the query and value thirds of each layer's fused c_attn.
LORA_TARGETS = ["c_attn.query", "c_attn.value"]
DEFAULT_LORA_DIM = 0
DEFAULT_LORA_ALPHA = 128.0
_REQUIRED = ("lora_dim", "lora_alpha", "lora_targets")
_KNOWN = _REQUIRED + ("lora_dropout", "lora_layer_dims", "lora_layer_alphas")


class LoRASettingsError(ValueError):
    """LoRA settings that are malformed or disagree with the flags; the message names the file."""


def format_alpha(alpha) -> str:
    """Shortest text that reads back as the same float: 32 -> '32', 2.5 -> '2.5'."""
    text = repr(float(alpha))
    return text[:-2] if text.endswith(".0") else text


def settings_from_config(config) -> "dict | None":
    """The record for a model built from `config` (a GPT2Config); None without LoRA."""
    if config.lora_attn_dim <= 0:
        return None
    record = {"lora_dim": int(config.lora_attn_dim), "lora_alpha": float(config.lora_attn_alpha),
              "lora_targets": list(LORA_TARGETS), "lora_dropout": float(config.lora_dropout)}
    if config.lora_layer_dims is not None:
        record["lora_layer_dims"] = [int(r) for r in config.lora_layer_dims]
    if config.lora_layer_alphas is not None:
        record["lora_layer_alphas"] = [float(a) for a in config.lora_layer_alphas]
    return record


def config_fields(settings: dict) -> dict:
    """GPT2Config keyword arguments of a record."""
    return {"lora_attn_dim": settings["lora_dim"], "lora_attn_alpha": settings["lora_alpha"],
            "lora_layer_dims": settings.get("lora_layer_dims"),
            "lora_layer_alphas": settings.get("lora_layer_alphas")}


def _number(value, integer):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if integer:
        return isinstance(value, int) or (math.isfinite(value) and value == int(value))
    return math.isfinite(value)


def parse_settings(value, source) -> dict:
    """A stored record (dict or JSON text) checked; LoRASettingsError names `source` and key."""
    where = f"{source}: {LORA_CONFIG_KEY}"
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise LoRASettingsError(f"{where} is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise LoRASettingsError(f"{where} is not a JSON object")
    for key in _REQUIRED:
        if key not in value:
            raise LoRASettingsError(f"{where} has no {key!r}")
    unknown = sorted(set(value) - set(_KNOWN))
    if unknown:
        raise LoRASettingsError(f"{where} has unknown key {unknown[0]!r} (written by a newer "
                                f"version?)")
    if not _number(value["lora_dim"], True) or value["lora_dim"] <= 0:
        raise LoRASettingsError(f"{where}: 'lora_dim' must be a positive integer, got "
                                f"{value['lora_dim']!r}")
    if not _number(value["lora_alpha"], False):
        raise LoRASettingsError(f"{where}: 'lora_alpha' must be a finite number, got "
                                f"{value['lora_alpha']!r}")
    if sorted(value["lora_targets"] or []) != sorted(LORA_TARGETS):
        raise LoRASettingsError(f"{where}: 'lora_targets' {value['lora_targets']!r} cannot be "
                                f"expressed; this model adapts {LORA_TARGETS}")
    out = {"lora_dim": int(value["lora_dim"]), "lora_alpha": float(value["lora_alpha"]),
           "lora_targets": list(LORA_TARGETS)}
    if "lora_dropout" in value:
        out["lora_dropout"] = float(value["lora_dropout"])
    for key, integer in (("lora_layer_dims", True), ("lora_layer_alphas", False)):
        items = value.get(key)
        if items is None:
            continue
        if not isinstance(items, list) or not all(_number(x, integer) for x in items) \
                or (integer and min(items, default=0) < 0):
            raise LoRASettingsError(f"{where}: {key!r} must be a list of "
                                    f"{'ranks >= 0' if integer else 'numbers'}, got {items!r}")
        out[key] = [int(x) if integer else float(x) for x in items]
    return out


# ----------------------------------------------------------------------------------- files
def encode_for_safetensors(settings: dict) -> dict:
    return {LORA_CONFIG_KEY: json.dumps(settings, sort_keys=True)}


def encode_for_npz(settings: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(settings, sort_keys=True).encode(), dtype=np.uint8)


def read_lora_settings(path) -> "dict | None":
    """The record stored in checkpoint `path`, or None when it carries none. Reads the header
    (safetensors), one array (npz) or the pickle's small top level (torch, memory-mapped)."""
    kind, path = weights_location(os.fspath(path))  # a folder: the weights file inside it
    if kind != "file":
        return None  # sharded transformers folders and TF checkpoints carry no LoRA settings
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            from safetensors import safe_open
            with safe_open(path, framework="numpy") as f:
                raw = (f.metadata() or {}).get(LORA_CONFIG_KEY)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                raw = bytes(npz[LORA_CONFIG_KEY]) if LORA_CONFIG_KEY in npz.files else None
        elif ext == ".pkl":
            raw = None  # jittor's Module.save: weights only
        else:
            import torch
            mmap = zipfile.is_zipfile(path)  # torch's zip format can be mapped, not the legacy one
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            raw = loaded.get(LORA_CONFIG_KEY) if isinstance(loaded, dict) else None
    except LoRASettingsError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers of damaged files raise anything
        raise LoRASettingsError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                                f"{exc}") from exc
    return None if raw is None else parse_settings(raw, path)


def mismatch(settings: dict, config, source) -> "str | None":
    """Why a model of `config` cannot take the LoRA weights of a checkpoint trained with
    `settings`, naming both values and the file; None when they agree."""
    theirs = config_fields(settings)
    ours = {key: getattr(config, key) for key in theirs}
    if theirs["lora_layer_dims"] is not None:
        theirs["lora_layer_dims"] = tuple(theirs["lora_layer_dims"])
    if theirs["lora_layer_alphas"] is not None:
        theirs["lora_layer_alphas"] = tuple(theirs["lora_layer_alphas"])
    names = {"lora_attn_dim": "lora_dim", "lora_attn_alpha": "lora_alpha",
             "lora_layer_dims": "lora_layer_dims", "lora_layer_alphas": "lora_layer_alphas"}
    for key, name in names.items():
        a, b = ours[key], theirs[key]
        if key == "lora_attn_alpha":
            same = float(a) == float(b)
            a, b = format_alpha(a), format_alpha(b)
        else:
            same = a == b
        if not same:
            return (f"the model has {name} {a}, but {source} was trained with {name} {b} (its "
                    f"stored LoRA settings); build the model with the checkpoint's settings "
                    f"(leave --lora_dim/--lora_alpha out)")
    return None


# ------------------------------------------------------------------------- command lines
def resolve_lora_args(args, paths=None):
    """Fill args.lora_dim / args.lora_alpha (None: not given) from the LoRA settings stored in
    the checkpoints the command names (--init_checkpoint, --lora_checkpoint, and with --resume
    the work dir's latest), else the defaults (0, 128); a given flag that disagrees with a
    checkpoint is refused. Sets args.lora_layer_dims / args.lora_layer_alphas (per-layer values,
    from a checkpoint only). Runs once (args.lora_layer_dims marks it done; model loading checks
    the stored settings again); raises LoRASettingsError."""
    if hasattr(args, "lora_layer_dims") and None not in (args.lora_dim, args.lora_alpha):
        return args
    if paths is None:
        paths = [getattr(args, name, None) for name in ("init_checkpoint", "lora_checkpoint")]
        if getattr(args, "resume", False) and getattr(args, "work_dir", None):
            step = latest_checkpoint_step(args.work_dir)
            if step is not None:
                paths.append(os.path.join(args.work_dir, f"model.{step}.pt"))
    found = []  # (path, settings)
    for path in paths:
        if path and os.path.isfile(path):
            settings = read_lora_settings(path)
            if settings is not None:
                found.append((path, settings))
    flags = {name: getattr(args, name, None) for name in ("lora_dim", "lora_alpha")}
    layer_dims = layer_alphas = None
    if found:
        first_path, first = found[0]
        for path, settings in found[1:]:
            keys = ("lora_dim", "lora_alpha", "lora_layer_dims", "lora_layer_alphas")
            if any(settings.get(k) != first.get(k) for k in keys):
                raise LoRASettingsError(
                    f"{first_path} and {path} carry different LoRA settings ("
                    + ", ".join(f"{k} {first.get(k)} vs {settings.get(k)}" for k in keys
                                if settings.get(k) != first.get(k)) + ")")
        for flag, value in flags.items():
            stored = first[flag]
            if value is None:
                flags[flag] = stored
            elif float(value) != float(stored):
                show = format_alpha if flag == "lora_alpha" else str
                raise LoRASettingsError(
                    f"--{flag} {show(value)} given, but {first_path} was trained with "
                    f"{flag} {show(stored)} (its stored LoRA settings): leave --{flag} out to "
                    f"use the checkpoint's, or give {show(stored)}")
        layer_dims, layer_alphas = first.get("lora_layer_dims"), first.get("lora_layer_alphas")
    if flags["lora_dim"] is None:
        flags["lora_dim"] = DEFAULT_LORA_DIM
    if flags["lora_alpha"] is None:
        flags["lora_alpha"] = DEFAULT_LORA_ALPHA
    if not math.isfinite(flags["lora_alpha"]):
        raise LoRASettingsError(f"--lora_alpha must be a finite number, got {flags['lora_alpha']}")
    args.lora_dim, args.lora_alpha = flags["lora_dim"], flags["lora_alpha"]
    args.lora_layer_dims, args.lora_layer_alphas = layer_dims, layer_alphas
    return args
