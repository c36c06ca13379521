# framework: docstring line 3
"""GPT-2 + LoRA in PyTorch: the model, training, beam search and generation.

Mirrors `jittor_impl` name for name, so code switches backend by changing one import.
"""
from shared.model.config import GPT2Config

from .lora import mark_only_lora_as_trainable, merge_lora, set_shared_dropout, unmerge_lora
from .model import GPT2LMModel

__all__ = ["GPT2Config", "GPT2LMModel", "mark_only_lora_as_trainable", "merge_lora",
           "unmerge_lora", "set_shared_dropout"]
