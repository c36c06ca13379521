# framework: docstring lines 3-4
"""GPT-2 + LoRA in Jittor: the model, training, beam search and generation.

Mirrors `torch_impl` name for name, so code switches backend by changing one import. Importing
it configures Jittor for this machine first (see `runtime.py`).
"""
from shared.model.config import GPT2Config

from .lora import mark_only_lora_as_trainable, merge_lora, set_shared_dropout, unmerge_lora
from .model import GPT2LMModel

__all__ = ["GPT2Config", "GPT2LMModel", "mark_only_lora_as_trainable", "merge_lora",
           "unmerge_lora", "set_shared_dropout"]
