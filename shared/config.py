"""GPT-2 model configuration shared by both backends.

Keyword names and defaults follow microsoft/LoRA `examples/NLG/src/model.py` (`GPT2Config`), so
code written against the reference constructs the same shapes here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
    lora_attn_dim: int = 0  # LoRA rank r; 0 means no LoRA
    lora_attn_alpha: int = 128
    lora_dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"GPT2Config: {name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPT2Config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.lora_attn_dim < 0:
            raise ValueError(f"GPT2Config: lora_attn_dim must be >= 0, got {self.lora_attn_dim}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"GPT2Config: lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_model_card(cls, model_card: str, n_embd=None, n_layer=None, n_head=None, **kwargs):
        """A config for `gpt2.sm|md|lg`; explicit `n_embd/n_layer/n_head` override the card."""
        if model_card not in MODEL_CARDS:
            raise ValueError(f"unknown model card {model_card!r}; choose one of {sorted(MODEL_CARDS)}")
        card_embd, card_layer, card_head = MODEL_CARDS[model_card]
        return cls(n_embd=n_embd or card_embd, n_layer=n_layer or card_layer,
                   n_head=n_head or card_head, **kwargs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
