"""Instruction tuning with the shared trainer: flags, the data splits, training, scoring.

`scripts/instruct_ft.py` splits and encodes an Alpaca-format JSON file (shared/text/instruct_data.py),
trains with `shared/train/trainer.py` (so --resume, checkpoints, the JSON-lines log and --tensorboard
work as for E2E), then generates responses for the held-out test split and scores them
(shared/tasks/instruct_eval.py: ROUGE-L, perplexity) into WORK_DIR/test_responses.jsonl and
WORK_DIR/instruct_eval.json.
"""
from __future__ import annotations

import argparse
import json
import os

from shared.runtime.arg_types import (non_negative_int, open_fraction, positive_int, seed_int,
                                      temperature, top_p_mass)
from shared.runtime.atomic import atomic_open, write_json
from shared.text.batching import FTDataset
from shared.text.instruct_data import prepare_instruct, read_split_entries
from shared.tasks.instruct_eval import generate_responses, response_perplexity, rouge_l
from shared.runtime.run_lock import RunLock
from shared.decode.sampling import EOT_ID, SamplingSettings
from shared.text.tokenizer import load_tokenizer
from shared.train.data_parallel import main_process_lock, processes_of
from shared.train.train_args import build_parser as build_train_parser
from shared.train.train_args import model_config, validate
from shared.train.trainer import Trainer, TrainingError

DESCRIPTION = ("Instruction-tune GPT-2 (+ LoRA) on Alpaca-format JSON with the PyTorch or Jittor "
               "backend, then generate and score responses for the held-out test split "
               "(ROUGE-L, perplexity)")


def add_split_args(group, seed_help="seed of the train/valid/test split"):
    """The flags of `instruct_data.split_entries`' split (instruct_ft.py's, and the preference
    scripts', which split the same way) to an argument group."""
    group.add_argument("--split_seed", type=seed_int, default=123, help=seed_help)
    group.add_argument("--valid_fraction", type=open_fraction, default=0.05)
    group.add_argument("--test_fraction", type=open_fraction, default=0.1)
    group.add_argument("--limit", type=positive_int, default=None,
                       help="use only the first N entries (default: all)")


def build_instruct_parser():
    p = build_train_parser()
    p.description = DESCRIPTION
    for action in p._actions:  # the splits come from --data
        if action.dest in ("train_data", "valid_data"):
            action.required, action.help = False, "written from --data (do not give)"
    g = p.add_argument_group("instruction data and evaluation")
    g.add_argument("--data", default=None,
                   help="Alpaca JSON (instruction/input/output); default: $INSTRUCT_DATA")
    g.add_argument("--data_out", default=None, help="folder for the encoded splits "
                   "(default: WORK_DIR/data)")
    g.add_argument("--vocab", default=None, help="GPT-2 vocab folder (default: GPT2_VOCAB_DIR)")
    g.add_argument("--full_loss", action="store_true",
                   help="score every token (default: the response tokens only)")
    add_split_args(g)
    g.add_argument("--no_eval", action="store_true", help="train only")
    g.add_argument("--eval_only", action="store_true",
                   help="score the finished run in --work_dir (no training)")
    g.add_argument("--eval_limit", type=positive_int, default=None,
                   help="generate for at most this many test entries (default: all)")
    g.add_argument("--temperature", type=temperature, default=0.0, help="0: greedy (default)")
    g.add_argument("--top_k", type=non_negative_int, default=0, help="0: all tokens")
    g.add_argument("--top_p", type=top_p_mass, default=1.0, help="1: off")
    g.add_argument("--max_new_tokens", type=positive_int, default=64)
    g.add_argument("--gen_seed", type=seed_int, default=0)
    return p


def prepare(args, tokenizer):
    args.data_out = args.data_out or os.path.join(args.work_dir, "data")
    counts = prepare_instruct(args.data, args.data_out, tokenizer, args.split_seed,
                              response_only=not args.full_loss,
                              valid_fraction=args.valid_fraction,
                              test_fraction=args.test_fraction, limit=args.limit)
    args.train_data = os.path.join(args.data_out, "train.jsonl")
    args.valid_data = os.path.join(args.data_out, "valid.jsonl")
    return counts


def final_checkpoint(work_dir):
    path = os.path.join(work_dir, "train_summary.json")
    if not os.path.isfile(path):
        raise TrainingError(f"--eval_only: {path} not found (train first)")
    with open(path) as f:
        return json.load(f)["final_checkpoint"]


def sampling_settings(args) -> SamplingSettings:
    """The test responses' sampling (a ValueError names what is wrong)."""
    return SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, eos_token_id=EOT_ID)


def evaluate(args, tokenizer, checkpoint, backend_for, load_model):
    """Generate for the test split, score ROUGE-L and perplexity; write the results."""
    entries = read_split_entries(os.path.join(args.data_out, "test_entries.json"))
    if args.eval_limit is not None:
        entries = entries[:args.eval_limit]
    scored = argparse.Namespace(**dict(vars(args), init_checkpoint=checkpoint))
    backend = backend_for(args.backend)(model_config(args), scored)
    test_set = FTDataset.from_file(os.path.join(args.data_out, "test.jsonl"),
                                   args.valid_batch_size, args.seq_len)
    perplexity = response_perplexity(backend, test_set, args.valid_batch_size)
    del backend
    settings = sampling_settings(args)
    model = load_model(argparse.Namespace(**dict(vars(scored), lora_checkpoint=None)))
    responses = generate_responses(model, entries, tokenizer, settings, args.gen_seed)
    with atomic_open(os.path.join(args.work_dir, "test_responses.jsonl")) as f:
        for entry, response in zip(entries, responses):
            f.write(json.dumps({"id": entry["id"], "instruction": entry["instruction"],
                                "input": entry["input"], "reference": entry["output"],
                                "response": response}) + "\n")
    result = {"backend": args.backend, "checkpoint": checkpoint, "test_entries": len(entries),
              "rouge_l": rouge_l([e["output"] for e in entries], responses),
              "test_loss": perplexity["loss"], "test_ppl": perplexity["ppl"],
              "scored_tokens": perplexity["tokens"],
              "loss_on": "all tokens" if args.full_loss else "response tokens",
              "sampling": {"temperature": args.temperature, "top_k": args.top_k,
                           "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                           "seed": args.gen_seed}}
    write_json(os.path.join(args.work_dir, "instruct_eval.json"), result)
    print(f"test: ROUGE-L {result['rouge_l']:.4f}, perplexity {result['test_ppl']:.3f} "
          f"({result['scored_tokens']} {result['loss_on']}), {len(entries)} responses in "
          f"{os.path.join(args.work_dir, 'test_responses.jsonl')}", flush=True)
    return result


def train_and_evaluate(args, backend_for, load_model):
    """Split and encode --data, train (or take the finished run's checkpoint), then score it;
    `backend_for(name)`: a backend's training class, `load_model(args)`: its inference model
    (backends/); the run folder is locked meanwhile."""
    with main_process_lock(args.work_dir, processes_of(args), RunLock):
        tokenizer = load_tokenizer(args.vocab)
        counts = prepare(args, tokenizer)
        print(f"instruction data {args.data}: " + ", ".join(
            f"{k} {v}" for k, v in counts.items()) + f" entries -> {args.data_out}", flush=True)
        validate(args)
        checkpoint = final_checkpoint(args.work_dir) if args.eval_only else \
            Trainer(args, backend_for(args.backend)).train()["final_checkpoint"]
        if not args.no_eval and processes_of(args).is_main:  # rank 0 alone scores
            evaluate(args, tokenizer, checkpoint, backend_for, load_model)
