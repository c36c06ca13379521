"""The model an inference script names: its flags, and building it on either backend.

`scripts/gpt2_beam.py` and `scripts/generate.py` take the same model flags (those of
microsoft/LoRA's gpt2_beam.py plus `--backend`, `--device`, shape overrides and
`--lora_checkpoint`); `load_inference_model` turns them into a ready model with its backend's
decoding functions, so the scripts themselves stay backend-neutral.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .train_args import add_launcher_args, add_model_shape_args, default_device, model_config

BACKENDS = ("torch", "jittor")


def add_inference_model_args(parser):
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda when available, else cpu")
    add_model_shape_args(parser)
    add_launcher_args(parser)
    parser.add_argument("--init_checkpoint", default=None,
                        help="model weights: HF GPT-2, microsoft/LoRA (full or fine-tuned), or "
                             "this project's .safetensors/.npz")
    parser.add_argument("--lora_checkpoint", default=None,
                        help="LoRA-only weights loaded after --init_checkpoint")


def inference_model_problems(args) -> list:
    """What is wrong with the model flags, as readable lines (empty when all is well)."""
    problems = []
    for flag in ("init_checkpoint", "lora_checkpoint"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            problems.append(f"--{flag} {path}: file not found")
    if args.lora_checkpoint and not args.init_checkpoint:
        problems.append("--lora_checkpoint holds LoRA weights only: give the base model with "
                        "--init_checkpoint too")
    if args.lora_checkpoint and args.lora_dim <= 0:
        problems.append("--lora_checkpoint needs --lora_dim (the rank it was trained with)")
    if args.device is None:
        args.device = default_device()
    try:
        model_config(args)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


@dataclass
class InferenceModel:
    """A loaded model and the decoding functions of its backend."""
    backend: str
    model: object
    beam_search: Callable  # (model, query, query_len, BeamSettings) -> (B, eval_len) ids
    generate: Callable  # (model, prompt_ids, SamplingSettings, seed, num_samples) -> id lists
    to_numpy: Callable

    def search(self, query, query_len, settings) -> np.ndarray:
        return self.to_numpy(self.beam_search(self.model, query, query_len, settings))

    def sample(self, prompt_ids, settings, seed, num_samples, on_token=None) -> list:
        return self.generate(self.model, prompt_ids, settings, seed, num_samples, on_token)


def load_inference_model(args) -> InferenceModel:
    """Build the model of `args` on `args.device` and load its checkpoints (base, then LoRA)."""
    config = model_config(args)
    if args.backend == "torch":
        import torch
        from torch_impl import beam, generate
        from torch_impl.model import GPT2LMModel
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but torch sees no CUDA GPU")
        model = GPT2LMModel(config)
        _load_checkpoints(model, args)
        model.to(args.device)

        def to_numpy(x):
            return x.cpu().numpy()
    elif args.backend == "jittor":
        from jittor_impl import beam, generate, runtime
        from jittor_impl.model import GPT2LMModel
        runtime.use_device(args.device)
        model = GPT2LMModel(config)
        _load_checkpoints(model, args)

        def to_numpy(x):
            return x.numpy()
    else:
        raise ValueError(f"unknown backend {args.backend!r}; choose one of {BACKENDS}")
    model.eval()
    return InferenceModel(args.backend, model, beam.beam_search, generate.generate, to_numpy)


def _load_checkpoints(model, args):
    if args.init_checkpoint:
        model.load_weight(args.init_checkpoint)
    else:
        print("warning: no --init_checkpoint; the model keeps its random initial weights")
    if args.lora_checkpoint:
        model.load_weight(args.lora_checkpoint)
