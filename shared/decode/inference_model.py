"""The model an inference script names: its flags, their checks, and the loaded model's interface.

`scripts/gpt2_beam.py` and `scripts/generate.py` take the same model flags (those of
microsoft/LoRA's gpt2_beam.py plus `--backend`, `--device`, shape overrides and
`--lora_checkpoint`); `backends.load_inference_model` turns them into an `InferenceModel`, a
ready model with its backend's decoding functions, so the scripts themselves stay backend-neutral.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shared.model.config import shape_flag_problems
from shared.runtime.environment import default_device, device_problems
from shared.model.checkpoint_files import checkpoint_path_problem
from shared.model.peft_methods import resolve_peft_args
from shared.train.train_args import (BACKENDS, add_launcher_args, add_model_shape_args,
                                     lora_flag_problems, model_config)


def add_inference_model_args(parser):
    parser.add_argument("--backend", required=True, choices=BACKENDS)
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda when available, else cpu")
    add_model_shape_args(parser)
    add_launcher_args(parser)
    parser.add_argument("--init_checkpoint", default=None,
                        help="model weights: HF GPT-2 (file or folder, whose config.json gives "
                             "the shape), OpenAI's TF GPT-2 folder, microsoft/LoRA (full or "
                             "fine-tuned), or this project's .safetensors/.npz")
    parser.add_argument("--lora_checkpoint", default=None,
                        help="LoRA-only weights loaded after --init_checkpoint")


def inference_model_problems(args) -> list:
    """What is wrong with the model flags, as readable lines (empty when all is well)."""
    problems = []
    for flag in ("init_checkpoint", "lora_checkpoint"):
        path = getattr(args, flag)
        if path:
            problems.append(checkpoint_path_problem(f"--{flag}", path))
    problems = [p for p in problems if p]
    problems += lora_flag_problems(args)  # --lora_dim/--lora_alpha, from the checkpoints too
    if args.lora_checkpoint and not args.init_checkpoint:
        problems.append("--lora_checkpoint holds LoRA weights only: give the base model with "
                        "--init_checkpoint too")
    if args.lora_checkpoint and args.lora_dim <= 0 \
            and getattr(resolve_peft_args(args), "peft", None) is None:
        problems.append(f"--lora_checkpoint needs --lora_dim (the rank it was trained with; "
                        f"{args.lora_checkpoint} does not store its LoRA settings)")
    if args.device is None:
        args.device = default_device()
    problems += device_problems(args.device)
    problems += shape_flag_problems(args.n_embd, args.n_layer, args.n_head, args.model_card)
    if not problems:
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
    beam_search: Callable  # (model, query, query_len, BeamSettings, cache=) -> (B, eval_len) ids
    generate: Callable  # (model, prompt_ids, SamplingSettings, seed, num_samples) -> id lists
    to_numpy: Callable

    def search(self, query, query_len, settings, cache="per_row") -> np.ndarray:
        return self.to_numpy(self.beam_search(self.model, query, query_len, settings, cache=cache))

    def sample(self, prompt_ids, settings, seed, num_samples, on_token=None) -> list:
        return self.generate(self.model, prompt_ids, settings, seed, num_samples, on_token)


def load_checkpoints(model, args):
    """The base checkpoint of `args`, then its LoRA checkpoint, into `model` (either backend)."""
    if args.init_checkpoint:
        model.load_weight(args.init_checkpoint)
    else:
        print("warning: no --init_checkpoint; the model keeps its random initial weights")
    if args.lora_checkpoint:
        model.load_weight(args.lora_checkpoint)
