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
Per layer, as peft does: `rank_pattern` / `alpha_pattern` (first key k with
re.match(rf"(.*\.)?({k})$", "transformer.h.N.attn.c_attn")) give that layer's rank and alpha, and
layers outside `layers_to_transform` get no LoRA; the model takes them as per-layer rank and
alpha (GPT2Config.lora_layer_dims / lora_layer_alphas), so the scaling alpha / r of each layer is
peft's exactly (any float alpha). The imported checkpoint stores these settings
(shared/model/lora_settings.py). Everything else in adapter_config.json that changes the output and
that the twins cannot express (use_rslora, use_dora, bias, modules_to_save, other target
modules, fan_in_fan_out false, unknown options...) is refused naming the key. Exporting a model
with per-layer settings writes them the same way.

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

from shared.runtime.atomic import atomic_path, write_json
from shared.model.config import GPT2Config
from shared.model.lora_settings import LORA_TARGETS
from shared.model.params import is_lora_name, parameter_shapes
from shared.model.pretrained import hf_gpt2_config, parse_hf_config, read_config_json

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
def c_attn_module(layer: int) -> str:
    """peft's name of layer `layer`'s c_attn (a key of rank_pattern / alpha_pattern)."""
    return f"transformer.h.{layer}.attn.c_attn"


def lora_to_peft(state: dict, config: GPT2Config) -> "OrderedDict[str, np.ndarray]":
    """Our per-layer lora_A/lora_B -> peft's dense c_attn keys (rank 2r, see the docstring);
    layers without LoRA (rank 0) have no keys."""
    e = config.n_embd
    if config.lora_attn_dim <= 0:
        raise HFFormatError("the model has no LoRA (lora_dim 0): export full weights instead")
    missing = [n for n in parameter_shapes(config) if is_lora_name(n) and n not in state]
    if missing:
        raise HFFormatError(f"no LoRA weights to export ({len(missing)} missing, first: "
                            f"{missing[0]}): give the run's LoRA checkpoint")
    out = OrderedDict()
    for i in range(config.n_layer):
        r = config.lora_dim_of(i)
        if r == 0:
            continue
        name = f"transformer.h.{i}.attn.c_attn."
        a, b = state[name + "lora_A"], state[name + "lora_B"]
        dense_b = np.zeros((3 * e, 2 * r), dtype=np.float32)
        dense_b[:e, :r] = b[:e]
        dense_b[2 * e:, r:] = b[e:]
        out[PEFT_PREFIX + name + "lora_A.weight"] = np.asarray(a, dtype=np.float32)
        out[PEFT_PREFIX + name + "lora_B.weight"] = dense_b
    return out


def peft_adapter_config(config: GPT2Config, base_model: str = "") -> dict:
    """adapter_config.json for `lora_to_peft`'s weights; layers whose rank or alpha differ from
    lora_dim / lora_alpha go into rank_pattern / alpha_pattern, layers without LoRA are left
    out of layers_to_transform."""
    r, alpha = config.lora_attn_dim, float(config.lora_attn_alpha)
    lora_layers = [i for i in range(config.n_layer) if config.lora_dim_of(i) > 0]
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": 2 * r, "lora_alpha": 2 * alpha,
        "rank_pattern": {c_attn_module(i): 2 * config.lora_dim_of(i) for i in lora_layers
                         if config.lora_dim_of(i) != r},
        "alpha_pattern": {c_attn_module(i): 2 * float(config.lora_alpha_of(i)) for i in lora_layers
                          if float(config.lora_alpha_of(i)) != alpha},
        "layers_to_transform": None if len(lora_layers) == config.n_layer else lora_layers,
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


# adapter_config.json keys without effect on an imported adapter's output (bookkeeping, or how
# fresh weights would be initialised: the file gives the weights).
_INERT_KEYS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
               "auto_mapping", "peft_version", "lora_dropout", "init_lora_weights",
               "loftq_config", "eva_config", "corda_config", "runtime_config", "megatron_core",
               "qalora_group_size", "ensure_weight_tying"}
# Keys this importer reads (see peft_to_lora).
_READ_KEYS = {"r", "lora_alpha", "target_modules", "fan_in_fan_out", "bias", "layers_to_transform",
              "layers_pattern", "rank_pattern", "alpha_pattern"}
# Anything else must be off (null, false, empty): use_rslora, use_dora, modules_to_save,
# exclude_modules, lora_bias, layer_replication, trainable_token_indices, target_parameters, ...
_OFF_REASONS = {
    "use_rslora": "rank-stabilised scaling (alpha / sqrt(r)) has no MergedLinear equivalent",
    "use_dora": "DoRA's magnitude vector has no MergedLinear equivalent",
    "use_qalora": "QA-LoRA has no MergedLinear equivalent",
    "modules_to_save": "fully trained extra modules are not LoRA weights and are not imported",
    "exclude_modules": "only target_modules ['c_attn'] on every listed layer is supported",
    "lora_bias": "a LoRA bias has no MergedLinear equivalent",
    "layer_replication": "replicated layers change the model's depth",
    "trainable_token_indices": "trained token embeddings are not LoRA weights",
    "target_parameters": "LoRA on parameters other than c_attn is not supported",
    "megatron_config": "Megatron-parallel layers are not supported",
    "alora_invocation_tokens": "activated LoRA has no MergedLinear equivalent",
}


def _pattern_value(pattern: dict, module: str, default):
    """peft's rule (peft.utils.other.get_pattern_key): the first key `k` of the pattern with
    re.match(rf"(.*\.)?({k})$", module) gives the value; else `default`."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_adapter_config(cfg: dict, n_layer: int, where: str):
    """Refuse, naming the key, what the twins cannot express; returns the targeted layers."""
    def refuse(key, why):
        raise HFFormatError(f"{where}: {key!r} = {json.dumps(cfg.get(key))}: {why}")
    if cfg.get("peft_type", "LORA") != "LORA":
        refuse("peft_type", "only LORA adapters are supported")
    for key, value in cfg.items():
        if key in _INERT_KEYS or key in _READ_KEYS or value in (None, False, [], {}, ""):
            continue
        refuse(key, _OFF_REASONS.get(key, "unknown to this importer, so it cannot be "
                                          "reproduced; refusing rather than importing it wrong"))
    if not cfg.get("fan_in_fan_out", False):
        refuse("fan_in_fan_out", "GPT-2's c_attn is a Conv1D; peft saves its LoRA with "
                                 "fan_in_fan_out true")
    if cfg.get("bias", "none") != "none":
        refuse("bias", "trained biases have no MergedLinear equivalent (bias must be 'none')")
    modules = [c_attn_module(i) for i in range(n_layer)]
    targets = cfg.get("target_modules")
    if targets is None:  # peft's default for model_type gpt2
        targets = ["c_attn"]
    if isinstance(targets, str):  # peft: a regex that must match the whole module name
        others = [f"transformer.h.{i}.{m}" for i in range(n_layer)
                  for m in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")] + ["lm_head"]
        if any(re.fullmatch(targets, m) for m in others) or not any(
                re.fullmatch(targets, m) for m in modules):
            refuse("target_modules", "only GPT-2's c_attn (query and value) can carry LoRA here")
        targeted = [i for i, m in enumerate(modules) if re.fullmatch(targets, m)]
    else:
        if not targets or any(t not in ("c_attn", "attn.c_attn") for t in targets):
            refuse("target_modules", "only ['c_attn'] is supported (this model's LoRA is on the "
                                     "query and value thirds of c_attn)")
        targeted = list(range(n_layer))
    layers = cfg.get("layers_to_transform")
    if layers is not None:
        layers = [layers] if isinstance(layers, int) else layers
        if not isinstance(layers, list) or not all(
                isinstance(i, int) and 0 <= i < n_layer for i in layers):
            refuse("layers_to_transform", f"must be layer indices in [0, {n_layer})")
        if cfg.get("layers_pattern") not in (None, "h", ["h"], "transformer.h"):
            refuse("layers_pattern", "GPT-2's layers are transformer.h")
        targeted = [i for i in targeted if i in layers]
    elif cfg.get("layers_pattern"):
        refuse("layers_pattern", "has no effect without layers_to_transform; refusing an "
                                 "adapter config peft itself rejects")
    for key in ("rank_pattern", "alpha_pattern"):
        if not isinstance(cfg.get(key) or {}, dict):
            refuse(key, "must map module-name patterns to numbers")
    return targeted


def peft_to_lora(arrays: dict, adapter_config: dict, config: GPT2Config, source="<adapter>",
                 config_source=None):
    """peft c_attn LoRA arrays -> (our {lora_A, lora_B} state, LoRA settings record of
    shared/model/lora_settings.py), exactly: per-layer rank and alpha from rank_pattern /
    alpha_pattern, no LoRA on layers outside layers_to_transform; see the module docstring."""
    e, n_layer = config.n_embd, config.n_layer
    targeted = _check_adapter_config(adapter_config, n_layer, config_source or source)
    layers = {}
    for key, value in arrays.items():
        m = _PEFT_KEY.match(key)
        if not m:
            raise HFFormatError(f"{source}: key {key!r} is not a LoRA weight on "
                                f"transformer.h.N.attn.c_attn (the only module supported)")
        layers.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value, dtype=np.float32)
    if not layers:
        raise HFFormatError(f"{source}: no LoRA weights")
    stray = sorted(set(layers) - set(targeted))
    if stray:
        raise HFFormatError(f"{source}: has weights for layer {stray[0]}, which the adapter "
                            f"config does not target (n_layer {n_layer}, layers_to_transform "
                            f"{adapter_config.get('layers_to_transform')})")
    absent = sorted(set(targeted) - set(layers))
    if absent:
        raise HFFormatError(f"{source}: no weights for layer {absent[0]}, which the adapter "
                            f"config targets (peft would give it freshly initialised LoRA)")
    default_rank, default_alpha = adapter_config["r"], adapter_config["lora_alpha"]
    state, dims, alphas = OrderedDict(), [0] * n_layer, [None] * n_layer
    for i in sorted(layers):
        pair, where = layers[i], f"{source}: layer {i}"
        rank = _pattern_value(adapter_config.get("rank_pattern"), c_attn_module(i), default_rank)
        alpha = _pattern_value(adapter_config.get("alpha_pattern"), c_attn_module(i),
                               default_alpha)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
            raise HFFormatError(f"{where}: rank {rank!r} (r / rank_pattern) is not a positive "
                                f"integer")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) \
                or not np.isfinite(alpha):
            raise HFFormatError(f"{where}: lora_alpha {alpha!r} (lora_alpha / alpha_pattern) is "
                                f"not a finite number")
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
        if _is_block(b, e, rank):  # our own export: rank 2r, alpha 2 alpha (halving is exact)
            r = rank // 2
            state[name + "lora_A"] = a
            state[name + "lora_B"] = np.concatenate([b[:e, :r], b[2 * e:, r:]], axis=0)
            dims[i], alphas[i] = r, float(alpha) / 2
        else:  # A serves query and value: the same delta at rank R, same alpha / R
            state[name + "lora_A"] = np.concatenate([a, a], axis=0)
            state[name + "lora_B"] = np.concatenate([b[:e], b[2 * e:]], axis=0)
            dims[i], alphas[i] = rank, float(alpha)
    first = min(layers)
    settings = {"lora_dim": dims[first], "lora_alpha": alphas[first],
                "lora_targets": list(LORA_TARGETS)}
    if any(d != dims[first] for d in dims):
        settings["lora_layer_dims"] = dims
    if any(a is not None and a != alphas[first] for a in alphas):
        settings["lora_layer_alphas"] = [alphas[first] if a is None else a for a in alphas]
    return state, settings


def _is_block(b, e, rank):
    if b is None or rank % 2 or b.shape != (3 * e, rank):
        return False
    r = rank // 2
    return not (np.any(b[:e, r:]) or np.any(b[e:2 * e]) or np.any(b[2 * e:, :r]))


def import_peft_adapter(adapter_dir, config: GPT2Config):
    """Read a peft adapter folder -> (our LoRA state, LoRA settings record)."""
    from safetensors.numpy import load_file
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
    if not isinstance(adapter_config, dict):
        raise HFFormatError(f"{cfg_path}: not a JSON object")
    for key in ("r", "lora_alpha"):
        if key not in adapter_config:
            raise HFFormatError(f"{cfg_path}: has no {key!r}")
    try:
        arrays = load_file(weights)
    except Exception as exc:  # noqa: BLE001 - a damaged file raises SafetensorError, OSError...
        raise HFFormatError(f"cannot read {weights}: {type(exc).__name__}: {exc}") from exc
    return peft_to_lora(arrays, adapter_config, config, source=weights, config_source=cfg_path)


def lora_delta(state: dict, config_or_scaling, layer: int) -> np.ndarray:
    """The (in, out) c_attn update of our LoRA weights (for checks and merging)."""
    if isinstance(config_or_scaling, GPT2Config):  # MergedLinear's scaling: alpha / r
        scaling = config_or_scaling.lora_alpha_of(layer) / config_or_scaling.lora_dim_of(layer)
    else:
        scaling = float(config_or_scaling)
    name = f"transformer.h.{layer}.attn.c_attn."
    a, b = state[name + "lora_A"].astype(np.float64), state[name + "lora_B"].astype(np.float64)
    r, e = a.shape[0] // 2, b.shape[0] // 2
    zeros = np.zeros((a.shape[1], e))
    return np.concatenate([a[:r].T @ b[:e].T, zeros, a[r:].T @ b[e:].T], axis=1) * scaling


def peft_delta(arrays: dict, adapter_config: dict, layer: int) -> np.ndarray:
    """peft's own rule, (lora_B @ lora_A).T * lora_alpha / r (per-layer values from
    rank_pattern / alpha_pattern), for one layer's c_attn."""
    key = f"{PEFT_PREFIX}transformer.h.{layer}.attn.c_attn.lora_"
    a = arrays[key + "A.weight"].astype(np.float64)
    b = arrays[key + "B.weight"].astype(np.float64)
    rank = _pattern_value(adapter_config.get("rank_pattern"), c_attn_module(layer),
                          adapter_config["r"])
    alpha = _pattern_value(adapter_config.get("alpha_pattern"), c_attn_module(layer),
                           adapter_config["lora_alpha"])
    return (b @ a).T * (alpha / rank)


# ----------------------------------------------------------------------- full weights <-> HF
def merged_base_state(state: dict, config: GPT2Config) -> "OrderedDict[str, np.ndarray]":
    """All base weights with the LoRA updates folded into c_attn.weight (no lora_* keys)."""
    out = OrderedDict()
    for name in parameter_shapes(GPT2Config(**dict(config.to_dict(), lora_attn_dim=0, peft=None))):
        out[name] = np.asarray(state[name], dtype=np.float32)
    if config.lora_attn_dim > 0:
        for i in (i for i in range(config.n_layer) if config.lora_dim_of(i) > 0):
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
    path = os.path.join(hf_dir, MODEL_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Hugging Face config not found: {path}")
    return GPT2Config(**parse_hf_config(read_config_json(path), path))
