"""The parameter-efficient fine-tuning methods beside LoRA, backend-neutral: their settings, the
parameters each adds (names, shapes, seeded initialisation), which parameters each trains, the
trainable-parameter line as peft prints it, and the record a checkpoint carries of its method.

Methods (`--peft`): `lora` (loralib's, models built with lora_dim > 0), `full` (every weight),
`top2` (the last two blocks), `bitfit` (every bias, LayerNorm biases included), `adapter`
(bottleneck adapters after attention and after the MLP, near identity at start), `prompt` (N
soft prompt embeddings before the input), `ptuning` (the prompt comes out of an MLP or LSTM
encoder, peft's PromptEncoder), `prefix` (per-layer key/value prefixes of N positions, peft's
PrefixEncoder, optionally through a projection MLP). The prompt methods and prefixes take the
first N positions (as peft does for causal LMs: the real tokens start at position N, and no loss
falls on a virtual position). Names of the added parameters sit under `transformer.`; the column
layout of the prefix table is peft's (layer, key|value, head, head_dim), so it exports as is.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np

METHODS = ("lora", "full", "top2", "bitfit", "adapter", "prompt", "ptuning", "prefix")
ADDS_PARAMETERS = ("adapter", "prompt", "ptuning", "prefix")  # the others train existing weights
VIRTUAL = ("prompt", "ptuning", "prefix")  # methods that take the first N positions
PROMPT_INITS = ("random", "vocab")
PTUNING_ENCODERS = ("mlp", "lstm")
PEFT_CONFIG_KEY = "peft_config"
# flag -> the methods it belongs to (given with another method: refused, naming both)
METHOD_FLAGS = {"num_virtual_tokens": VIRTUAL, "prompt_init": ("prompt",),
                "ptuning_encoder": ("ptuning",), "encoder_hidden_size": ("ptuning",),
                "prefix_projection": ("prefix",), "adapter_dim": ("adapter",)}
DEFAULTS = {"num_virtual_tokens": 20, "prompt_init": "random", "ptuning_encoder": "mlp",
            "encoder_hidden_size": None, "prefix_projection": 0, "adapter_dim": 16}
PROMPT = "transformer.prompt_encoder."
PREFIX = "transformer.prefix_encoder."


class PeftSettingsError(ValueError):
    """Settings that cannot build a model, or a checkpoint of another method; names the flag/file."""


@dataclass(frozen=True)
class PeftSettings:
    """One method and its sizes (only the method's own fields matter)."""
    method: str
    num_virtual_tokens: int = 0
    prompt_init: str = "random"
    ptuning_encoder: str = "mlp"
    encoder_hidden_size: Optional[int] = None  # default: n_embd (peft's token_dim)
    prefix_projection: int = 0  # hidden width of the prefix MLP; 0: the prefixes are the weights
    adapter_dim: int = 0

    def __post_init__(self):
        if self.method not in METHODS or self.method == "lora":
            raise PeftSettingsError(f"peft method must be one of {METHODS[1:]} (lora is the "
                                    f"config's lora_attn_dim), got {self.method!r}")

    @property
    def virtual_tokens(self) -> int:
        """Positions the method takes before the input (0: none)."""
        return self.num_virtual_tokens if self.method in VIRTUAL else 0

    def to_record(self) -> dict:
        """Only the fields of the method (what a checkpoint carries)."""
        record = {"method": self.method}
        for key in (k for k, methods in METHOD_FLAGS.items() if self.method in methods):
            record[key] = getattr(self, key)
        return record


def settings_of(value) -> "PeftSettings | None":
    """A PeftSettings from itself, a dict (a config read back), or None."""
    if value is None or isinstance(value, PeftSettings):
        return value
    return PeftSettings(**value)


def method_of(config) -> str:
    """The method a model of `config` (a GPT2Config) trains with."""
    if config.peft is not None:
        return config.peft.method
    return "lora" if config.lora_attn_dim > 0 else "full"


def virtual_tokens(config) -> int:
    return 0 if config.peft is None else config.peft.virtual_tokens


def encoder_width(config) -> int:
    return config.peft.encoder_hidden_size or config.n_embd


# ----------------------------------------------------------------------------- parameters
def _dense(shapes, prefix, n_in, n_out):
    shapes[prefix + "weight"] = (n_in, n_out)  # (in, out), as the model's Conv1D
    shapes[prefix + "bias"] = (n_out,)


def added_shapes(config) -> "OrderedDict[str, tuple]":
    """The parameters the method adds, in a fixed order, with their shapes."""
    shapes, peft, e = OrderedDict(), config.peft, config.n_embd
    if peft is None or peft.method not in ADDS_PARAMETERS:
        return shapes
    n = peft.num_virtual_tokens
    if peft.method == "adapter":
        for i in range(config.n_layer):
            for place in ("adapter_attn", "adapter_mlp"):
                _dense(shapes, f"transformer.h.{i}.{place}.down.", e, peft.adapter_dim)
                _dense(shapes, f"transformer.h.{i}.{place}.up.", peft.adapter_dim, e)
    elif peft.method == "prompt":
        shapes[PROMPT + "embedding.weight"] = (n, e)
    elif peft.method == "ptuning":
        h = encoder_width(config)
        shapes[PROMPT + "embedding.weight"] = (n, e)
        if peft.ptuning_encoder == "lstm":  # torch.nn.LSTM's names and shapes, 2 layers, both ways
            for layer in range(2):
                n_in = e if layer == 0 else 2 * h
                for suffix in ("", "_reverse"):
                    shapes[PROMPT + f"lstm_head.weight_ih_l{layer}{suffix}"] = (4 * h, n_in)
                    shapes[PROMPT + f"lstm_head.weight_hh_l{layer}{suffix}"] = (4 * h, h)
                    shapes[PROMPT + f"lstm_head.bias_ih_l{layer}{suffix}"] = (4 * h,)
                    shapes[PROMPT + f"lstm_head.bias_hh_l{layer}{suffix}"] = (4 * h,)
            _dense(shapes, PROMPT + "mlp_head.fc_in.", 2 * h, 2 * h)
            _dense(shapes, PROMPT + "mlp_head.fc_out.", 2 * h, e)
        else:
            _dense(shapes, PROMPT + "mlp_head.fc_in.", e, h)
            _dense(shapes, PROMPT + "mlp_head.fc_mid.", h, h)
            _dense(shapes, PROMPT + "mlp_head.fc_out.", h, e)
    elif peft.method == "prefix":
        width = config.n_layer * 2 * e
        if peft.prefix_projection:
            shapes[PREFIX + "embedding.weight"] = (n, e)
            _dense(shapes, PREFIX + "transform.fc_in.", e, peft.prefix_projection)
            _dense(shapes, PREFIX + "transform.fc_out.", peft.prefix_projection, width)
        else:
            shapes[PREFIX + "embedding.weight"] = (n, width)
    return shapes


def is_added_name(name: str) -> bool:
    """A parameter one of these methods adds (not part of GPT-2)."""
    return (name.startswith((PROMPT, PREFIX)) or ".adapter_attn." in name
            or ".adapter_mlp." in name)


def initial_value(name, shape, rng, config, drawn):
    """The seeded initial value of added parameter `name` (`drawn`: the weights drawn before it,
    the token embedding among them). The distributions are peft's and torch's defaults:
    embeddings N(0, 1) (prompt_init vocab: rows of wte for token ids drawn uniformly), linear
    layers and the LSTM uniform in +-1/sqrt(fan_in) (+-1/sqrt(hidden) for the LSTM); an
    adapter's down projection N(0, initializer_range) and its up projection and biases 0, so
    each adapter starts as the identity (Houlsby et al.)."""
    peft = config.peft
    if ".adapter_" in name:
        if name.endswith("down.weight"):
            return rng.normal(0.0, config.initializer_range, size=shape)
        return np.zeros(shape)
    if name.endswith("embedding.weight"):
        if peft.method == "prompt" and peft.prompt_init == "vocab":
            ids = rng.integers(0, config.vocab_size, size=shape[0])
            return np.asarray(drawn["transformer.wte.weight"], dtype=np.float64)[ids]
        return rng.normal(0.0, 1.0, size=shape)
    if ".lstm_head." in name:
        bound = 1.0 / math.sqrt(encoder_width(config))
    else:
        fan_in = shape[0] if name.endswith("weight") else None
        if fan_in is None:  # a bias: its layer's fan-in, from the weight drawn just before
            fan_in = drawn[name[:-len("bias")] + "weight"].shape[0]
        bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape)


# ------------------------------------------------------------------------------- training
def trainable_line(trainable: int, total: int) -> str:
    """peft's `print_trainable_parameters` line (peft_model.py), character for character."""
    return (f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}")


# ------------------------------------------------------------------------ flags and files
def settings_from_args(args) -> "PeftSettings | None":
    """The settings the flags name (args.peft etc. already checked by `flag_problems`)."""
    method = getattr(args, "peft", None)
    if method in (None, "lora", "full"):
        return None
    values = {k: getattr(args, k, None) for k in METHOD_FLAGS}
    return PeftSettings(method=method, **{k: DEFAULTS[k] if v is None else v
                                          for k, v in values.items()})


def flag_problems(args) -> list:
    """Lines naming each bad --peft flag: a flag of another method, a size out of range,
    --lora_dim with a method other than lora. Fills args.peft (default: lora with --lora_dim > 0,
    else full)."""
    method = getattr(args, "peft", None)
    lora_dim = getattr(args, "lora_dim", None) or 0
    if method is None:
        args.peft = method = "lora" if lora_dim > 0 else "full"
    problems = []
    if method == "lora" and lora_dim <= 0:
        problems.append("--peft lora needs --lora_dim > 0")
    if method != "lora" and lora_dim > 0:
        problems.append(f"--lora_dim {lora_dim} is a flag of --peft lora, not of --peft {method}")
    for flag, methods in METHOD_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None and method not in methods:
            problems.append(f"--{flag} is a flag of --peft {'/'.join(methods)}, not of "
                            f"--peft {method}")
    n = getattr(args, "num_virtual_tokens", None)
    if n is not None and n <= 0:
        problems.append(f"--num_virtual_tokens must be positive, got {n}")
    return problems


def positions_problem(config, seq_len, flag="--seq_len") -> "str | None":
    """Virtual tokens that leave fewer positions than `seq_len` real ones need; None if they fit."""
    n = virtual_tokens(config)
    if n and n + seq_len > config.n_positions:
        return (f"--num_virtual_tokens {n} leaves {config.n_positions - n} of the model's "
                f"{config.n_positions} positions, fewer than {flag} {seq_len}")
    return None


def resolve_peft_args(args):
    """--peft and its flags left out: taken from the method record of the checkpoints the
    command names (--init_checkpoint, --lora_checkpoint), so that decoding a checkpoint of a
    PEFT run builds the model it was trained as."""
    if getattr(args, "peft", None) is not None:
        return args
    for name in ("init_checkpoint", "lora_checkpoint"):
        path = getattr(args, name, None)
        settings = read_peft_settings(path) if path else None
        if settings is not None:
            args.peft = settings.method
            for key, value in settings.to_record().items():
                if key != "method" and getattr(args, key, None) is None:
                    setattr(args, key, value)
            break
    return args


def add_peft_args(parser):
    """The --peft flags (None: not given, so a flag of another method is caught)."""
    from shared.runtime.arg_types import non_negative_int, positive_int
    parser.add_argument("--peft", default=None, choices=METHODS,
                        help="fine-tuning method (default: lora with --lora_dim > 0, else full)")
    parser.add_argument("--num_virtual_tokens", type=int, default=None,
                        help="prompt/ptuning/prefix: virtual tokens N (default 20)")
    parser.add_argument("--prompt_init", default=None, choices=PROMPT_INITS,
                        help="prompt: random N(0,1) embeddings or rows of wte (default random)")
    parser.add_argument("--ptuning_encoder", default=None, choices=PTUNING_ENCODERS,
                        help="ptuning: the prompt encoder, mlp or lstm (default mlp)")
    parser.add_argument("--encoder_hidden_size", type=positive_int, default=None,
                        help="ptuning: the encoder's hidden width (default n_embd)")
    parser.add_argument("--prefix_projection", type=non_negative_int, default=None,
                        help="prefix: hidden width of the reparameterisation MLP (0: none)")
    parser.add_argument("--adapter_dim", type=positive_int, default=None,
                        help="adapter: bottleneck width D (default 16)")


def record_json(settings: PeftSettings) -> str:
    return json.dumps(settings.to_record(), sort_keys=True)


def parse_record(value, source) -> PeftSettings:
    """A stored record (dict, JSON text or bytes) -> PeftSettings; names `source` when bad."""
    if isinstance(value, (bytes, bytearray, np.ndarray)):
        value = bytes(value).decode("utf-8", errors="replace")
    try:
        record = json.loads(value) if isinstance(value, str) else dict(value)
        return PeftSettings(**record)
    except (ValueError, TypeError) as exc:
        raise PeftSettingsError(f"{source}: {PEFT_CONFIG_KEY} cannot be read ({exc})") from exc


def read_peft_settings(path) -> "PeftSettings | None":
    """The record stored in checkpoint `path` (.pt/.bin top-level key, .safetensors metadata,
    .npz array), or None when it carries none."""
    import os
    import zipfile
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        return None
    try:
        if ext == ".safetensors":
            from safetensors import safe_open
            with safe_open(path, framework="numpy") as f:
                raw = (f.metadata() or {}).get(PEFT_CONFIG_KEY)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                raw = bytes(npz[PEFT_CONFIG_KEY]) if PEFT_CONFIG_KEY in npz.files else None
        elif ext in (".pt", ".bin", ".pth"):
            import torch
            loaded = torch.load(path, map_location="cpu", weights_only=True,
                                mmap=zipfile.is_zipfile(path))
            raw = loaded.get(PEFT_CONFIG_KEY) if isinstance(loaded, dict) else None
        else:
            raw = None
    except Exception:  # noqa: BLE001 - the weights reader reports a damaged file itself
        return None
    return None if raw is None else parse_record(raw, path)


def input_positions(config) -> int:
    """Positions left to the real tokens (the virtual ones take the first N)."""
    return config.n_positions - virtual_tokens(config)
