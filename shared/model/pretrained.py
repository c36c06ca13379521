"""Pretrained GPT-2 folders: what their config says about the model (checkpoint_files.py finds
their weights).

`--init_checkpoint` of every script may name
- a folder written by transformers: `config.json` + `model.safetensors` or `pytorch_model.bin`
  (or their sharded form, `*.index.json` + shards);
- a folder of OpenAI's original TensorFlow GPT-2: `hparams.json` + `checkpoint` +
  `model.ckpt.index` + `model.ckpt.data-00000-of-00001` (read by tf_checkpoint.py, no
  TensorFlow needed);
- a file inside such a folder (`DIR/model.safetensors`, `DIR/model.ckpt.index`, or the TF prefix
  `DIR/model.ckpt`): the folder's config is read all the same;
- any other checkpoint file (checkpoint.py): no config, the flags give the shape.

Where a config exists it gives the model (`model_config`): its shapes, layer_norm_epsilon and
attention scaling; an explicit --n_embd/--n_layer/--n_head that differs is refused naming both
values, and --model_card yields to it. config.json keys the twins compute as transformers does:
vocab_size, n_positions, n_embd, n_layer, n_head (required), layer_norm_epsilon,
scale_attn_weights, scale_attn_by_inverse_layer_idx, activation_function gelu_new /
gelu_pytorch_tanh / gelu_fast (one tanh GELU), n_inner null or 4 n_embd, and
reorder_and_upcast_attn (in fp32 it only moves the scaling into the product: same values to
rounding). Refused with one line naming the key and value: other activations (the twins' GELU
has fused CUDA kernels and a clamped-tanh backward in Jittor; each new activation would need
its own in both twins, and GPT-2 checkpoints use gelu_new), another n_inner, cross-attention,
an untied output head, another model_type. Dropout probabilities (attn_pdrop, resid_pdrop,
embd_pdrop) are not read: this GPT-2, as microsoft/LoRA's, has no such dropout.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass

from shared.model.checkpoint_files import CheckpointError, weights_location
from shared.model.config import GPT2Config

HF_CONFIG = "config.json"
OPENAI_HPARAMS = "hparams.json"
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_TF_OPTIMIZER = re.compile(r"(^|/)(global_step|beta[12]_power)$|/Adam(_1)?$")
_TF_NAME = re.compile(r"^model/(?:h(\d+)/)?(.+)$")
_REQUIRED = object()


class ConfigFileError(CheckpointError):
    """A config.json / hparams.json that cannot describe this model; names the file and key."""


# -------------------------------------------------------------------------------- reading
def read_openai_tf(prefix):
    """An OpenAI GPT-2 TF checkpoint under Hugging Face's key names (TF-style .g/.b/.w suffixes,
    which checkpoint.canonical_key maps), conv1d weights [1, nx, nf] squeezed to [nx, nf];
    optimizer slots (Adam, global_step, beta powers) are dropped."""
    from shared.model.tf_checkpoint import read_tf_checkpoint
    out = OrderedDict()
    for name, value in read_tf_checkpoint(prefix).items():
        if _TF_OPTIMIZER.search(name):
            continue
        m = _TF_NAME.match(name)
        if not m:  # reported as an unexpected key by checkpoint.match_state_dict
            out[name] = value
            continue
        layer, rest = m.groups()
        key = rest.replace("/", ".")
        if key in ("wte", "wpe"):
            key += ".weight"
        if layer is not None:
            key = f"h.{layer}.{key}"
            if key.endswith(".w") and value.ndim == 3 and value.shape[0] == 1:
                value = value[0]
        out[key] = value
    return out


# -------------------------------------------------------------------------------- configs
def config_path(path):
    """(file, kind) of the config describing the weights `path` names: kind 'hf' for
    config.json, 'openai' for a TF checkpoint's hparams.json; None where there is none.
    A TF checkpoint without hparams.json is an error (its shapes would be guesses)."""
    kind, location = weights_location(path)
    folder = os.path.dirname(location)
    if kind == "tf":
        hparams = os.path.join(folder, OPENAI_HPARAMS)
        if not os.path.isfile(hparams):
            raise ConfigFileError(f"{hparams}: not found; OpenAI's TF GPT-2 folders have it "
                                  f"(n_vocab, n_ctx, n_embd, n_head, n_layer) and the shapes "
                                  f"of {location} are read from it")
        return hparams, "openai"
    config = os.path.join(folder, HF_CONFIG)
    return (config, "hf") if os.path.isfile(config) else None


def read_config_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _value(data, path, key, kind, default=_REQUIRED):
    """data[key] checked to be of `kind`: 'count' (positive int), 'positive' (finite number
    > 0), 'bool', 'str'; `default` when absent (required when no default is given)."""
    if key not in data:
        if default is _REQUIRED:
            raise ConfigFileError(f"{path}: missing key {key!r}")
        return default
    value = data[key]
    ok = {"count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
          "positive": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v) and v > 0,
          "bool": lambda v: isinstance(v, bool),
          "str": lambda v: isinstance(v, str)}[kind](value)
    if not ok:
        wanted = {"count": "a positive integer", "positive": "a positive number",
                  "bool": "true or false", "str": "a string"}[kind]
        raise ConfigFileError(f"{path}: key {key!r} is {json.dumps(value)}, expected {wanted}")
    return value


def _refuse(path, key, value, why):
    raise ConfigFileError(f"{path}: {key} = {json.dumps(value)} cannot be loaded: {why}")


def parse_hf_config(data: dict, path) -> dict:
    """GPT2Config keyword arguments from a transformers GPT-2 config.json (see the docstring)."""
    model_type = _value(data, path, "model_type", "str")
    if model_type != "gpt2":
        _refuse(path, "model_type", model_type, "only GPT-2 ('gpt2') checkpoints are supported")
    out = {key: _value(data, path, key, "count")
           for key in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")}
    out["n_ctx"] = _value(data, path, "n_ctx", "count", out["n_positions"])
    out["layer_norm_epsilon"] = _value(data, path, "layer_norm_epsilon", "positive", 1e-5)
    out["scale_attn_weights"] = _value(data, path, "scale_attn_weights", "bool", True)
    out["scale_attn_by_inverse_layer_idx"] = _value(
        data, path, "scale_attn_by_inverse_layer_idx", "bool", False)
    _value(data, path, "reorder_and_upcast_attn", "bool", False)  # fp32: the same values
    activation = _value(data, path, "activation_function", "str", "gelu_new")
    if activation not in TANH_GELUS:
        _refuse(path, "activation_function", activation,
                f"the twins implement GPT-2's tanh GELU only ({', '.join(TANH_GELUS)})")
    n_inner = data.get("n_inner")
    if n_inner is not None:
        n_inner = _value(data, path, "n_inner", "count")
        if n_inner != 4 * out["n_embd"]:
            _refuse(path, "n_inner", n_inner, f"the twins' MLP is 4 * n_embd = "
                                              f"{4 * out['n_embd']} wide")
    if _value(data, path, "add_cross_attention", "bool", False):
        _refuse(path, "add_cross_attention", True, "the twins have no cross-attention layers")
    if not _value(data, path, "tie_word_embeddings", "bool", True):
        _refuse(path, "tie_word_embeddings", False, "the twins tie the output head to wte")
    if out["n_embd"] % out["n_head"]:
        _refuse(path, "n_head", out["n_head"], f"n_embd = {out['n_embd']} is not divisible by it")
    return out


def parse_openai_hparams(data: dict, path) -> dict:
    """GPT2Config keyword arguments from OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head,
    n_layer; the rest of its model is GPT-2's defaults: tanh GELU, eps 1e-5, 1/sqrt(d))."""
    values = {key: _value(data, path, key, "count")
              for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")}
    if values["n_embd"] % values["n_head"]:
        _refuse(path, "n_head", values["n_head"],
                f"n_embd = {values['n_embd']} is not divisible by it")
    return {"vocab_size": values["n_vocab"], "n_positions": values["n_ctx"],
            "n_ctx": values["n_ctx"], "n_embd": values["n_embd"], "n_layer": values["n_layer"],
            "n_head": values["n_head"]}


@dataclass
class CheckpointConfig:
    """What a checkpoint folder's config says: `values` are GPT2Config keyword arguments."""
    path: str
    values: dict

    def model_config(self, n_embd=None, n_layer=None, n_head=None, **kwargs) -> GPT2Config:
        """The model, with LoRA settings etc. in `kwargs`; shape flags that are given must agree."""
        for flag, value in (("n_embd", n_embd), ("n_layer", n_layer), ("n_head", n_head)):
            if value is not None and value != self.values[flag]:
                raise ConfigFileError(f"--{flag} {value} contradicts {flag} = "
                                      f"{self.values[flag]} in {self.path}: drop the flag (the "
                                      f"checkpoint's config gives the shape)")
        return GPT2Config(**self.values, **kwargs)


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


def write_config_beside(folder, config: GPT2Config):
    """config.json (transformers' GPT-2 keys) of `config` into `folder`, so that checkpoints
    written there are read back as the model they are (shapes, eps, attention scaling)."""
    from shared.runtime.atomic import write_json
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, HF_CONFIG)
    write_json(path, hf_gpt2_config(config))
    return path


def remove_config_beside(folder):
    """Remove a config.json that an earlier run wrote into `folder`, if there is one."""
    try:
        os.remove(os.path.join(folder, HF_CONFIG))
    except FileNotFoundError:
        pass


def checkpoint_config(path):
    """The CheckpointConfig of the weights `path` names, or None (no path, or no config)."""
    if not path:
        return None
    found = config_path(path)
    if found is None:
        return None
    file, kind = found
    data = read_config_json(file)
    parse = parse_hf_config if kind == "hf" else parse_openai_hparams
    return CheckpointConfig(file, parse(data, file))
