"""Prompt tuning, P-tuning and prefix tuning as peft adapter folders, and back (no framework).

peft saves a prompt-learning adapter as one tensor, `prompt_embeddings`: what its encoder puts
before the input (prompt tuning, P-tuning: (N, n_embd)) or into every layer's cache (prefix
tuning: (N, n_layer * 2 * n_embd), columns (layer, key|value, head, head_dim)); loaded with
`inference_mode` it uses that table as it is. So the export runs the encoder (the MLP or LSTM of
P-tuning, the projection MLP of prefix tuning) here, in float64 numpy, and writes the table with
an adapter_config.json that needs no encoder (`prefix_projection` false). Imported back, a
prompt-tuning or P-tuning table becomes a `prompt` model, a prefix table a `prefix` model
without projection: the same outputs, the encoder weights themselves are not in the file.
Adapters placed as here (after attention and after the MLP) and BitFit have no peft format that
expresses them; their checkpoints stay in this project's format.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict

import numpy as np

from shared.model.peft_methods import PREFIX, PROMPT, PeftSettings, encoder_width

PEFT_TYPES = {"prompt": "PROMPT_TUNING", "ptuning": "P_TUNING", "prefix": "PREFIX_TUNING"}
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TABLE_KEY = "prompt_embeddings"


class PromptAdapterError(ValueError):
    """An adapter folder or method peft's prompt-learning format cannot carry; names the file."""


def _dense(x, state, prefix):
    return x @ state[prefix + "weight"].astype(np.float64) + state[prefix + "bias"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _lstm(x, state, hidden):
    """torch.nn.LSTM(num_layers=2, bidirectional=True) over one (T, n_in) sequence."""
    for layer in range(2):
        outputs = []
        for suffix, order in (("", range(x.shape[0])), ("_reverse", range(x.shape[0] - 1, -1, -1))):
            name = PROMPT + f"lstm_head.%s_l{layer}{suffix}"
            w_ih, w_hh = (state[name % k].astype(np.float64) for k in ("weight_ih", "weight_hh"))
            bias = state[name % "bias_ih"] + state[name % "bias_hh"].astype(np.float64)
            h, c, out = np.zeros(hidden), np.zeros(hidden), np.zeros((x.shape[0], hidden))
            for t in order:
                i, f, g, o = np.split(x[t] @ w_ih.T + h @ w_hh.T + bias, 4)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
                out[t] = h
            outputs.append(out)
        x = np.concatenate(outputs, axis=1)
    return x


def virtual_table(state: dict, config) -> np.ndarray:
    """The table peft saves as `prompt_embeddings`, computed from this project's weights."""
    method = config.peft.method if config.peft is not None else None
    if method in ("prompt", "ptuning"):
        x = state[PROMPT + "embedding.weight"].astype(np.float64)
        if method == "ptuning" and config.peft.ptuning_encoder == "lstm":
            x = _lstm(x, state, encoder_width(config))
            x = _dense(np.maximum(_dense(x, state, PROMPT + "mlp_head.fc_in."), 0), state,
                       PROMPT + "mlp_head.fc_out.")
        elif method == "ptuning":
            x = np.maximum(_dense(x, state, PROMPT + "mlp_head.fc_in."), 0)
            x = np.maximum(_dense(x, state, PROMPT + "mlp_head.fc_mid."), 0)
            x = _dense(x, state, PROMPT + "mlp_head.fc_out.")
        return x.astype(np.float32)
    if method == "prefix":
        x = state[PREFIX + "embedding.weight"].astype(np.float64)
        if config.peft.prefix_projection:
            x = _dense(np.tanh(_dense(x, state, PREFIX + "transform.fc_in.")), state,
                       PREFIX + "transform.fc_out.")
        return x.astype(np.float32)
    raise PromptAdapterError(
        f"--peft {method or ('lora' if config.lora_attn_dim else 'full')} has no peft "
        f"prompt-learning format (prompt, ptuning and prefix have; LoRA exports as a LORA "
        f"adapter; adapters placed as here and BitFit have none): keep this project's checkpoint")


def prompt_adapter_config(config, base_model: str = "") -> dict:
    """adapter_config.json of `virtual_table`'s table (inference mode: no encoder needed)."""
    peft = config.peft
    record = {"peft_type": PEFT_TYPES[peft.method], "task_type": "CAUSAL_LM",
              "base_model_name_or_path": base_model, "inference_mode": True,
              "num_virtual_tokens": peft.num_virtual_tokens, "token_dim": config.n_embd,
              "num_transformer_submodules": 1, "num_attention_heads": config.n_head,
              "num_layers": config.n_layer, "modules_to_save": None}
    if peft.method == "ptuning":
        record.update(encoder_reparameterization_type=peft.ptuning_encoder.upper(),
                      encoder_hidden_size=encoder_width(config))
    if peft.method == "prefix":
        record.update(prefix_projection=False, encoder_hidden_size=config.n_embd)
    return record


def export_prompt_adapter(state: dict, config, out_dir, base_model: str = "") -> list:
    """Write adapter_config.json + adapter_model.safetensors into `out_dir`; returns the paths."""
    from safetensors.numpy import save_file

    from shared.runtime.atomic import atomic_path, write_json
    table = virtual_table(state, config)
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, ADAPTER_WEIGHTS)
    with atomic_path(weights) as tmp:
        save_file({TABLE_KEY: np.ascontiguousarray(table)}, tmp, metadata={"format": "pt"})
    cfg = os.path.join(out_dir, ADAPTER_CONFIG)
    write_json(cfg, prompt_adapter_config(config, base_model))
    return [cfg, weights]


def is_prompt_adapter(adapter_dir) -> bool:
    """Whether the folder's adapter_config.json names a prompt-learning method of PEFT_TYPES."""
    try:
        with open(os.path.join(adapter_dir, ADAPTER_CONFIG), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("peft_type") in PEFT_TYPES.values()


def import_prompt_adapter(adapter_dir, config):
    """A peft prompt-learning folder -> ({name: array}, PeftSettings) for a base of `config`."""
    from safetensors.numpy import load_file
    cfg_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    weights = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    with open(cfg_path, encoding="utf-8") as f:
        record = json.load(f)
    peft_type, n = record.get("peft_type"), record.get("num_virtual_tokens")
    if not isinstance(n, int) or n <= 0:
        raise PromptAdapterError(f"{cfg_path}: 'num_virtual_tokens' must be a positive integer, "
                                 f"got {n!r}")
    if (record.get("num_transformer_submodules") or 1) != 1:
        raise PromptAdapterError(f"{cfg_path}: num_transformer_submodules "
                                 f"{record['num_transformer_submodules']} (encoder-decoder); GPT-2 has 1")
    for key, ours in (("token_dim", config.n_embd), ("num_layers", config.n_layer),
                      ("num_attention_heads", config.n_head)):
        if record.get(key) not in (None, ours):
            raise PromptAdapterError(f"{cfg_path}: {key} {record[key]} is not the base model's "
                                     f"{ours}: the adapter belongs to another base")
    table = load_file(weights).get(TABLE_KEY)
    if table is None:
        raise PromptAdapterError(f"{weights}: has no {TABLE_KEY!r} tensor")
    if peft_type == "PREFIX_TUNING":
        settings, name = PeftSettings("prefix", num_virtual_tokens=n), PREFIX + "embedding.weight"
        width = config.n_layer * 2 * config.n_embd
    else:
        settings, name = PeftSettings("prompt", num_virtual_tokens=n), PROMPT + "embedding.weight"
        width = config.n_embd
    if table.shape != (n, width):
        raise PromptAdapterError(f"{weights}: {TABLE_KEY} has shape {tuple(table.shape)}, the "
                                 f"base model needs ({n}, {width}): another base or method")
    return OrderedDict([(name, np.asarray(table, dtype=np.float32))]), settings
