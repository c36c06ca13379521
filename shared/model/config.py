"""GPT-2 model configuration shared by both backends.

Keyword names and defaults follow microsoft/LoRA `examples/NLG/src/model.py` (`GPT2Config`), so
code written against the reference constructs the same shapes here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

# The three model cards of microsoft/LoRA's NLG scripts: (n_embd, n_layer, n_head).
MODEL_CARDS = {
    "gpt2.sm": (768, 12, 12),
    "gpt2.md": (1024, 24, 16),
    "gpt2.lg": (1280, 36, 20),
}


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_ctx: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    # Attention scores are divided by sqrt(head_dim) (scale_attn_weights) and, with
    # scale_attn_by_inverse_layer_idx, by layer_index + 1 too: transformers' GPT2Config keys,
    # read from a checkpoint folder's config.json (shared/model/pretrained.py).
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    lora_attn_dim: int = 0  # LoRA rank r; 0 means no LoRA
    lora_attn_alpha: float = 128  # scaling = alpha / r (microsoft/LoRA); any positive number
    lora_dropout: float = 0.0
    # Per-layer LoRA rank and alpha (one entry per layer; rank 0: no LoRA on that layer), e.g.
    # from a peft adapter's rank_pattern/alpha_pattern/layers_to_transform; None: every layer
    # has lora_attn_dim / lora_attn_alpha.
    lora_layer_dims: Optional[Tuple[int, ...]] = None
    lora_layer_alphas: Optional[Tuple[float, ...]] = None
    # A fine-tuning method other than LoRA / full fine-tuning that adds parameters or trains a
    # subset (shared/model/peft_methods.py's PeftSettings; a dict when read back); None: neither.
    peft: Any = None

    def __post_init__(self):
        from shared.model.peft_methods import settings_of
        self.peft = settings_of(self.peft)
        for name in ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"GPT2Config: {name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT2Config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.lora_attn_dim < 0:
            raise ValueError(f"GPT2Config: lora_attn_dim must be >= 0, got {self.lora_attn_dim}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"GPT2Config: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"GPT2Config: layer_norm_epsilon must be positive, got "
                             f"{self.layer_norm_epsilon}")
        if self.lora_attn_dim == 0:  # a base model: per-layer LoRA settings do not apply
            self.lora_layer_dims = self.lora_layer_alphas = None
        for name in ("lora_layer_dims", "lora_layer_alphas"):
            values = getattr(self, name)
            if values is None:
                continue
            values = tuple(values)
            if len(values) != self.n_layer:
                raise ValueError(f"GPT2Config: {name} has {len(values)} entries for "
                                 f"{self.n_layer} layers")
            setattr(self, name, values)
        if self.lora_layer_dims is not None and (min(self.lora_layer_dims) < 0
                                                 or not any(self.lora_layer_dims)):
            raise ValueError(f"GPT2Config: lora_layer_dims must be >= 0 with one > 0, got "
                             f"{list(self.lora_layer_dims)}")

    def lora_dim_of(self, layer: int) -> int:
        """LoRA rank of layer `layer` (0: none)."""
        return self.lora_attn_dim if self.lora_layer_dims is None else self.lora_layer_dims[layer]

    def lora_alpha_of(self, layer: int) -> float:
        """LoRA alpha of layer `layer` (its scaling is alpha / rank)."""
        return (self.lora_attn_alpha if self.lora_layer_alphas is None
                else self.lora_layer_alphas[layer])

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def attention_divisor(self, layer_index: int) -> float:
        """What layer `layer_index` divides its attention scores by (transformers' GPT-2:
        sqrt(head_dim) if scale_attn_weights, times layer_index + 1 if
        scale_attn_by_inverse_layer_idx)."""
        divisor = math.sqrt(self.head_dim) if self.scale_attn_weights else 1.0
        if self.scale_attn_by_inverse_layer_idx:
            divisor *= layer_index + 1
        return divisor

    @classmethod
    def from_model_card(cls, model_card: str, n_embd=None, n_layer=None, n_head=None, **kwargs):
        """A config for `gpt2.sm|md|lg`; explicit `n_embd/n_layer/n_head` override the card."""
        if model_card not in MODEL_CARDS:
            raise ValueError(f"unknown model card {model_card!r}; choose one of {sorted(MODEL_CARDS)}")
        card_embd, card_layer, card_head = MODEL_CARDS[model_card]
        def pick(value, card):  # only an absent value falls back to the card; 0 is an error
            return card if value is None else value
        return cls(n_embd=pick(n_embd, card_embd), n_layer=pick(n_layer, card_layer),
                   n_head=pick(n_head, card_head), **kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def shape_flag_problems(n_embd=None, n_layer=None, n_head=None, model_card="gpt2.sm") -> list:
    """The --n_embd/--n_layer/--n_head overrides checked under their flag names."""
    problems = []
    for flag, value in (("n_embd", n_embd), ("n_layer", n_layer), ("n_head", n_head)):
        if value is not None and value <= 0:
            problems.append(f"--{flag} must be positive, got {value}")
    if not problems and model_card in MODEL_CARDS:
        card_embd, _, card_head = MODEL_CARDS[model_card]
        embd = card_embd if n_embd is None else n_embd
        head = card_head if n_head is None else n_head
        if embd % head:
            problems.append(f"--n_embd {embd} is not divisible by --n_head {head} "
                            f"(attention splits the width into equal heads)")
    return problems


def seq_len_problem(seq_len: int, config: GPT2Config, flag: str = "--seq_len"):
    """A sequence longer than the position table cannot run (torch fails on the lookup, Jittor
    would read past the table); None when it fits."""
    if seq_len > config.n_positions:
        return (f"{flag} {seq_len} is longer than the model's {config.n_positions} positions "
                f"(n_positions); use at most {config.n_positions}")
    return None
