"""Pretraining on raw text with the shared trainer: its flags, datasets and periodic samples.

`scripts/pretrain.py` is the trainer of `shared/train/trainer.py` with the windows of
`shared/text/text_data.py` in place of E2E batches (the language-model loss over every position) and
a sample printed every `--sample_every` steps. Samples are drawn by the backend-neutral numpy
sampler (`shared/decode/sampling.py`) from a fixed seed, so torch and jittor print the same text while
their weights agree; every sample is also kept in WORK_DIR/samples.jsonl.
"""
from __future__ import annotations

import json
import os

from shared.runtime.arg_types import (non_negative_int, open_fraction, positive_int, seed_int,
                                      temperature)
from shared.runtime.atomic import write_text
from shared.runtime.run_lock import RunLock
from shared.decode.sampling import EOT_ID, SamplingSettings
from shared.text.text_data import WindowDataset, split_tail, token_stream
from shared.text.tokenizer import load_tokenizer
from shared.runtime.paths import DataDirError, resolve_data_path
from shared.train.data_parallel import main_process_lock, processes_of
from shared.train.train_args import build_parser, lora_flag_problems
from shared.train.trainer import Trainer

# The task's own arguments a resumed run must keep (besides the trainer's RESUME_KEYS).
PRETRAIN_RESUME_KEYS = ("text", "stride", "valid_fraction")
TEXT_ENV = "TEXT_DATA"


def build_pretrain_parser():
    p = build_parser(data_args=False, description="Pretrain GPT-2 on raw UTF-8 text with the "
                     "PyTorch or Jittor backend (full training, from scratch or --init_checkpoint)")
    p.add_argument("--text", nargs="+", default=None,
                   help=f"UTF-8 text files (default: ${TEXT_ENV}, paths separated by "
                        f"'{os.pathsep}')")
    p.add_argument("--stride", type=positive_int, default=None, help="window step (default: --seq_len)")
    p.add_argument("--valid_fraction", type=open_fraction, default=0.1,
                   help="held-out tail of the token stream for validation")
    p.add_argument("--vocab", default=None, help="GPT-2 vocab folder (else GPT2_VOCAB_DIR)")
    p.add_argument("--sample_every", type=non_negative_int, default=0, help="print a sample every N steps "
                   "(0: only at the end)")
    p.add_argument("--prompt", default="Every effort moves you", help="sample prompt")
    p.add_argument("--temperature", type=temperature, default=1.0, help="0: greedy")
    p.add_argument("--top_k", type=non_negative_int, default=0,
                   help="keep the k most likely tokens (0: all)")
    p.add_argument("--sample_tokens", type=positive_int, default=32, help="new tokens per sample")
    p.add_argument("--sample_seed", type=seed_int, default=123, help="seed of the sampler")
    p.set_defaults(seq_len=256, lr=0.0004, weight_decay=0.1, save_interval=100000,
                   eval_interval=100000)
    return p


def pretrain_problems(args) -> list:
    """Task-specific argument problems (the trainer checks the rest); fills derived values."""
    problems = lora_flag_problems(args)  # --lora_dim/--lora_alpha, from the checkpoint too
    try:
        args.text = resolve_data_path(args.text, TEXT_ENV, flag="--text FILE [FILE ...]",
                                      what="text", many=True)
    except DataDirError as exc:
        problems.append(str(exc))
    if args.stride is None:  # the numeric flags' ranges are checked by their argparse types
        args.stride = args.seq_len
    if not args.prompt.strip():
        problems.append("--prompt is empty: the samples continue it, give some text")
    if args.lora_dim:
        problems.append("pretraining trains every weight: leave --lora_dim at 0")
    try:
        sampling_settings(args)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


def sampling_settings(args) -> SamplingSettings:
    return SamplingSettings(temperature=args.temperature, top_k=args.top_k,
                            max_new_tokens=args.sample_tokens, eos_token_id=EOT_ID)


def pretrain_datasets(args, tokenizer):
    """(training windows, validation windows) over the files' token stream and its tail."""
    tokens = token_stream(args.text, tokenizer)
    train_tokens, valid_tokens = split_tail(tokens, args.valid_fraction, args.seq_len)
    print(f"text: {len(tokens)} tokens from {len(args.text)} file(s); {len(train_tokens)} for "
          f"training, {len(valid_tokens)} held out (tail)", flush=True)
    return (WindowDataset(train_tokens, args.seq_len, args.stride, args.train_batch_size,
                          "training text"),
            WindowDataset(valid_tokens, args.seq_len, args.stride, args.valid_batch_size,
                          "validation tail"))


class PeriodicSampler:
    """The trainer's `on_step` hook: a sample every `every` steps (and `final()` at the end)."""

    def __init__(self, trainer, tokenizer, args):
        self.trainer, self.tokenizer, self.every = trainer, tokenizer, args.sample_every
        self.prompt, self.seed = args.prompt, args.sample_seed
        self.prompt_ids = tokenizer.encode(args.prompt)
        self.settings = sampling_settings(args)
        self.path = os.path.join(args.work_dir, "samples.jsonl")
        self.records = []
        if os.path.isfile(self.path) and args.resume:
            with open(self.path, encoding="utf-8") as f:
                self.records = [json.loads(line) for line in f if line.strip()]

    def __call__(self, step):
        if self.every and step % self.every == 0:
            self.sample(step)

    def sample(self, step):
        if not self.trainer.processes.is_main:  # rank 0 alone samples and writes
            return None
        tokens = self.trainer.backend.sample(self.prompt_ids, self.settings, self.seed)[0]
        text = self.prompt + self.tokenizer.decode(tokens)
        self.trainer.write(f"| sample at step {step}: {text!r}")
        self.records = [r for r in self.records if r["step"] < step]  # none from a lost run
        self.records.append({"step": step, "backend": self.trainer.backend.name,
                             "prompt": self.prompt, "seed": self.seed, "tokens": tokens,
                             "text": text})
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        return text


def pretrain(args, backend_for):
    """Train every weight on the text windows (`backend_for(args.backend)`: the backend's
    training class) with a sample every --sample_every steps and one at the end; the run
    folder is locked meanwhile. Returns the trainer's summary."""
    with main_process_lock(args.work_dir, processes_of(args), RunLock):
        tokenizer = load_tokenizer(args.vocab)
        datasets = pretrain_datasets(args, tokenizer)
        trainer = Trainer(args, backend_for(args.backend), datasets=datasets,
                          resume_keys=PRETRAIN_RESUME_KEYS)
        sampler = PeriodicSampler(trainer, tokenizer, args)
        trainer.on_step = sampler
        summary = trainer.train()
        sampler.sample(summary["steps"])
    return summary
