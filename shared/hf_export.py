"""Hugging Face formats: a trained LoRA as a peft adapter, full weights as a transformers GPT-2.

peft's LoRA on GPT-2's `c_attn` (a Conv1D, weight stored (in, out), so `fan_in_fan_out=True`)
keeps one dense pair per layer: `lora_A.weight` (R, n_embd) and `lora_B.weight` (3 n_embd, R),
delta (in, out) = (lora_B @ lora_A).T * lora_alpha / R. This project's LoRA is microsoft/LoRA's
MergedLinear with enable_lora [True, False, True]: `lora_A` (2r, n_embd) holds the query rows
then the value rows, `lora_B` (2 n_embd, r) the query block then the value block, delta =
[A_q.T B_q.T, 0, A_v.T B_v.T] * alpha / r. The exact peft equivalent has rank R = 2r:
  lora_A = our lora_A (query rows, value rows),
  lora_B = block matrix [[B_q, 0], [0, 0], [0, B_v]] (the key third all zero),
  lora_alpha = 2 alpha (so that lora_alpha / R = alpha / r).
Importing reverses this when the adapter has that block structure (rank r, bit-exact); any other
peft adapter on c_attn whose key rows of lora_B are zero is taken at rank R with lora_A used for
both query and value (A_q = A_v = A): the same delta weight. Key rows that are not zero cannot be
expressed by a q/v-only MergedLinear and are refused.

Full weights go out as `model.safetensors` + `config.json` that `GPT2LMHeadModel.from_pretrained`
reads (keys `transformer.*`, Conv1D layout as here, head tied to `wte`, metadata format "pt"),
with any LoRA update merged into `c_attn.weight`; `checkpoint.py` already reads that layout back.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict

import numpy as np

from .atomic import atomic_path, write_json
from .config import GPT2Config
from .params import is_lora_name, parameter_shapes

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
PEFT_PREFIX = "base_model.model."
_PEFT_KEY = re.compile(r"^base_model\.model\.transformer\.h\.(\d+)\.attn\.c_attn\."
                       r"lora_([AB])(?:\.default)?\.weight$")


class HFFormatError(ValueError):
    """A Hugging Face file this project cannot express; the message names file and key."""


def _save_safetensors(path, arrays: dict):
    from safetensors.numpy import save_file
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()},
                  tmp, metadata={"format": "pt"})


# ------------------------------------------------------------------------------ LoRA <-> peft
def lora_to_peft(state: dict, config: GPT2Config) -> "OrderedDict[str, np.ndarray]":
    """Our per-layer lora_A/lora_B -> peft's dense c_attn keys (rank 2r, see the docstring)."""
    r, e = config.lora_attn_dim, config.n_embd
    if r <= 0:
        raise HFFormatError("the model has no LoRA (lora_dim 0): export full weights instead")
    missing = [n for n in parameter_shapes(config) if is_lora_name(n) and n not in state]
    if missing:
        raise HFFormatError(f"no LoRA weights to export ({len(missing)} missing, first: "
                            f"{missing[0]}): give the run's LoRA checkpoint")
    out = OrderedDict()
    for i in range(config.n_layer):
        name = f"transformer.h.{i}.attn.c_attn."
        a, b = state[name + "lora_A"], state[name + "lora_B"]
        dense_b = np.zeros((3 * e, 2 * r), dtype=np.float32)
        dense_b[:e, :r] = b[:e]
        dense_b[2 * e:, r:] = b[e:]
        out[PEFT_PREFIX + name + "lora_A.weight"] = np.asarray(a, dtype=np.float32)
        out[PEFT_PREFIX + name + "lora_B.weight"] = dense_b
    return out


def peft_adapter_config(config: GPT2Config, base_model: str = "") -> dict:
    """adapter_config.json for `lora_to_peft`'s weights."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": 2 * config.lora_attn_dim, "lora_alpha": 2 * config.lora_attn_alpha,
        "lora_dropout": config.lora_dropout, "target_modules": ["c_attn"],
        "fan_in_fan_out": True, "bias": "none", "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }


def export_peft_adapter(state: dict, config: GPT2Config, out_dir, base_model: str = "") -> list:
    """Write adapter_config.json + adapter_model.safetensors into `out_dir`; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, ADAPTER_WEIGHTS)
    _save_safetensors(weights, lora_to_peft(state, config))
    cfg = os.path.join(out_dir, ADAPTER_CONFIG)
    write_json(cfg, peft_adapter_config(config, base_model))
    return [cfg, weights]


def peft_to_lora(arrays: dict, adapter_config: dict, n_embd: int, source="<adapter>"):
    """peft c_attn LoRA arrays -> (our {lora_A, lora_B} state, rank, alpha); see the docstring."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise HFFormatError(f"{source}: peft_type {adapter_config.get('peft_type')!r} is not LORA")
    for flag in ("use_rslora", "use_dora"):
        if adapter_config.get(flag):
            raise HFFormatError(f"{source}: {flag} adapters have no MergedLinear equivalent")
    if not adapter_config.get("fan_in_fan_out", False):
        raise HFFormatError(f"{source}: GPT-2's c_attn is a Conv1D; peft saves its LoRA with "
                            f"fan_in_fan_out true, this adapter says false")
    layers, e = {}, n_embd
    for key, value in arrays.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise HFFormatError(f"{source}: key {key!r} is not a LoRA weight on "
                                f"transformer.h.N.attn.c_attn (the only module supported)")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value, dtype=np.float32)
    if not layers:
        raise HFFormatError(f"{source}: no LoRA weights")
    rank = int(adapter_config["r"])
    scaling = float(adapter_config["lora_alpha"]) / rank
    block = all(_is_block(p.get("B"), e, rank) for p in layers.values())
    our_rank = rank // 2 if block else rank
    state = OrderedDict()
    for i in sorted(layers):
        pair = layers[i]
        where = f"{source}: layer {i}"
        if set(pair) != {"A", "B"}:
            raise HFFormatError(f"{where}: needs both lora_A and lora_B")
        a, b = pair["A"], pair["B"]
        if a.shape != (rank, e) or b.shape != (3 * e, rank):
            raise HFFormatError(f"{where}: lora_A {a.shape} / lora_B {b.shape} do not fit "
                                f"r={rank}, n_embd={e} (expected ({rank}, {e}) / ({3 * e}, {rank}))")
        if np.any(b[e:2 * e]):
            raise HFFormatError(f"{where}: lora_B updates the key projection; a q/v-only "
                                f"MergedLinear cannot express that")
        name = f"transformer.h.{i}.attn.c_attn."
        if block:
            r = our_rank
            state[name + "lora_A"] = a
            state[name + "lora_B"] = np.concatenate([b[:e, :r], b[2 * e:, r:]], axis=0)
        else:
            state[name + "lora_A"] = np.concatenate([a, a], axis=0)
            state[name + "lora_B"] = np.concatenate([b[:e], b[2 * e:]], axis=0)
    return state, our_rank, scaling * our_rank


def _is_block(b, e, rank):
    if b is None or rank % 2 or b.shape != (3 * e, rank):
        return False
    r = rank // 2
    return not (np.any(b[:e, r:]) or np.any(b[e:2 * e]) or np.any(b[2 * e:, :r]))


def import_peft_adapter(adapter_dir, n_embd: int):
    """Read a peft adapter folder -> (our LoRA state, rank, alpha)."""
    from .checkpoint import read_checkpoint  # a damaged file is a CheckpointError naming it
    cfg_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    weights = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    for path in (cfg_path, weights):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"peft adapter file not found: {path}")
    with open(cfg_path, encoding="utf-8") as f:
        try:
            adapter_config = json.load(f)
        except json.JSONDecodeError as exc:
            raise HFFormatError(f"{cfg_path}:{exc.lineno}:{exc.colno}: invalid JSON "
                                f"({exc.msg})") from exc
    for key in ("r", "lora_alpha"):
        if key not in adapter_config:
            raise HFFormatError(f"{cfg_path}: has no {key!r}")
    return peft_to_lora(read_checkpoint(weights), adapter_config, n_embd, source=weights)


def lora_delta(state: dict, config_or_scaling, layer: int) -> np.ndarray:
    """The (in, out) c_attn update of our LoRA weights (for checks and merging)."""
    if isinstance(config_or_scaling, GPT2Config):  # MergedLinear's scaling: alpha / r
        scaling = config_or_scaling.lora_attn_alpha / config_or_scaling.lora_attn_dim
    else:
        scaling = float(config_or_scaling)
    name = f"transformer.h.{layer}.attn.c_attn."
    a, b = state[name + "lora_A"].astype(np.float64), state[name + "lora_B"].astype(np.float64)
    r, e = a.shape[0] // 2, b.shape[0] // 2
    zeros = np.zeros((a.shape[1], e))
    return np.concatenate([a[:r].T @ b[:e].T, zeros, a[r:].T @ b[e:].T], axis=1) * scaling


def peft_delta(arrays: dict, adapter_config: dict, layer: int) -> np.ndarray:
    """peft's own rule, (lora_B @ lora_A).T * lora_alpha / r, for one layer's c_attn."""
    key = f"{PEFT_PREFIX}transformer.h.{layer}.attn.c_attn.lora_"
    a = arrays[key + "A.weight"].astype(np.float64)
    b = arrays[key + "B.weight"].astype(np.float64)
    return (b @ a).T * (adapter_config["lora_alpha"] / adapter_config["r"])


# ----------------------------------------------------------------------- full weights <-> HF
def hf_gpt2_config(config: GPT2Config) -> dict:
    """config.json of transformers' GPT2LMHeadModel with this model's shapes and semantics."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.n_positions,
        "n_ctx": config.n_ctx, "n_embd": config.n_embd, "n_layer": config.n_layer,
        "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": config.initializer_range,
        "scale_attn_weights": config.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
        "use_cache": True,
    }


def merged_base_state(state: dict, config: GPT2Config) -> "OrderedDict[str, np.ndarray]":
    """All base weights with the LoRA updates folded into c_attn.weight (no lora_* keys)."""
    out = OrderedDict()
    for name in parameter_shapes(GPT2Config(**dict(config.to_dict(), lora_attn_dim=0))):
        out[name] = np.asarray(state[name], dtype=np.float32)
    if config.lora_attn_dim > 0:
        for i in range(config.n_layer):
            key = f"transformer.h.{i}.attn.c_attn.weight"
            out[key] = (out[key].astype(np.float64) + lora_delta(state, config, i)).astype(np.float32)
    return out


def export_hf_model(state: dict, config: GPT2Config, out_dir) -> list:
    """Write model.safetensors + config.json (LoRA merged) into `out_dir`; returns the paths."""
    missing = [n for n in parameter_shapes(config) if n not in state]
    if missing:
        raise HFFormatError(f"cannot export: the weights lack {len(missing)} parameters "
                            f"(first: {missing[0]}); give the full model, not LoRA weights alone")
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, MODEL_WEIGHTS)
    _save_safetensors(weights, merged_base_state(state, config))
    cfg = os.path.join(out_dir, MODEL_CONFIG)
    write_json(cfg, hf_gpt2_config(config))
    return [cfg, weights]


def config_from_hf(hf_dir) -> GPT2Config:
    """Our GPT2Config from a transformers GPT-2 config.json (refusing what this model lacks;
    pretrained.parse_hf_config says what is read and what is refused)."""
    from .pretrained import parse_hf_config, read_config_json
    path = os.path.join(hf_dir, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Hugging Face config not found: {path}")
    return GPT2Config(**parse_hf_config(read_config_json(path), path))
