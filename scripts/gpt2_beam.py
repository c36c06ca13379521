#!/usr/bin/env python
"""Beam-search generation for encoded E2E data, as microsoft/LoRA's src/gpt2_beam.py.

Same flags, defaults and output (one line `{"id": i, "predict": [eval_len ids]}` per input line,
in id order, in WORK_DIR/OUTPUT_FILE; plus a "query_digest" key that gpt2_decode.py checks, see
shared/decode/prediction_file.py), plus `--backend`, e.g.
  python scripts/gpt2_beam.py --backend jittor --data data/e2e/test.jsonl --batch_size 1 \
      --seq_len 512 --eval_len 64 --model_card gpt2.md --init_checkpoint model.26290.pt \
      --lora_dim 4 --lora_alpha 32 --beam 10 --length_penalty 0.8 --no_repeat_ngram_size 4 \
      --repetition_penalty 1.0 --eos_token_id 628 --work_dir out --output_file predict.jsonl
`--eos_token_id` appends to the default [50256], as in the reference. The search itself is
specified in shared/decode/beam_spec.py; its results do not depend on --batch_size.
"""
import os
import random
import sys
import time

import numpy as np
from tqdm import tqdm

from backends import load_inference_model
from shared.runtime.arg_types import positive_int, seed_int
from shared.runtime.atomic import atomic_open
from shared.text.batching import FTDataset
from shared.decode.beam_spec import add_beam_settings_args, settings_from_args
from shared.model.checkpoint import CheckpointError
from shared.model.config import seq_len_problem
from shared.decode.decode_cache import CACHES
from shared.text.e2e_data import E2EDataError
from shared.decode.inference_model import add_inference_model_args, inference_model_problems
from shared.decode.prediction_file import prediction_line
from shared.runtime.preflight import input_file_problems, output_file_problems
from shared.runtime.entry_point import run_stoppable
from shared.train.train_args import model_config
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="encoded jsonl (gpt2_encode.py) to continue")
    p.add_argument("--batch_size", type=positive_int, default=10, help="queries per search")
    p.add_argument("--seq_len", type=positive_int, default=512,
                   help="queries are cut to their last seq_len - eval_len tokens")
    add_beam_settings_args(p)
    add_inference_model_args(p)
    p.add_argument("--work_dir", default=os.getenv("PT_OUTPUT_DIR", "gpt2_model"))
    p.add_argument("--output_file", default="beam_prediction.jsonl")
    p.add_argument("--random_seed", type=seed_int, default=10)
    p.add_argument("--unique_contexts", action="store_true",
                   help="generate only for the first line of each distinct context (E2E repeats "
                        "an MR once per reference; gpt2_decode.py reads only those lines' "
                        "predictions, so its files come out the same, ~7x faster on E2E test)")
    p.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--cache", choices=CACHES, default="per_row",
                   help="KV cache of the search: per_row, the exact path, or shared_prefix, faster "
                        "on a GPU (each query's keys once; attention sums in another order)")
    return p


def validate(args):
    problems = []
    problems += input_file_problems("--data", args.data)
    if args.batch_size < 1:
        problems.append(f"--batch_size must be >= 1, got {args.batch_size}")
    if not 0 < args.eval_len < args.seq_len:
        problems.append(f"need 0 < --eval_len < --seq_len, got eval_len={args.eval_len}, "
                        f"seq_len={args.seq_len}")
    try:
        settings_from_args(args)
    except ValueError as exc:
        problems.append(str(exc))
    problems += inference_model_problems(args)
    problems += output_file_problems("--work_dir/--output_file",
                                     os.path.join(args.work_dir, args.output_file))
    if not problems:
        problems = [p for p in [seq_len_problem(args.seq_len, model_config(args))] if p]
    return problems


def set_seeds(seed, backend):
    """The search is deterministic; seeding keeps parity with the reference's set-up."""
    random.seed(seed)
    np.random.seed(seed)
    if backend == "torch":
        import torch
        torch.manual_seed(seed)
    else:
        from jittor_impl.runtime import jt
        jt.set_global_seed(seed)


def run(args):
    settings = settings_from_args(args)
    dataset = FTDataset.from_file(args.data, args.batch_size, args.seq_len, args.eval_len)
    report = dataset.truncation_report()
    if report:
        print(f"warning: {report}")
    set_seeds(args.random_seed, args.backend)
    loaded = load_inference_model(args)
    items = dataset.first_of_each_context() if args.unique_contexts else list(range(dataset.num_examples))
    print(f"beam search: {len(items)} queries"
          + (f" (first line of each distinct context of {dataset.num_examples})" if args.unique_contexts else "")
          + f", backend {args.backend} on {args.device}, beam {settings.beam}, eval_len "
          f"{settings.eval_len}, eos {list(settings.eos_token_ids)}")
    predictions = {}
    started = time.time()
    batches = tqdm(dataset.query_batches(args.batch_size, items=items),
                   total=-(-len(items) // args.batch_size), desc="beam", unit="batch",
                   disable=args.no_progress)
    for batch in batches:
        sequences = loaded.search(batch["query"], batch["query_len"], settings, args.cache)
        for query_id, sequence in zip(batch["id"].tolist(), sequences.tolist()):
            predictions[query_id] = sequence
    seconds = time.time() - started
    path = os.path.join(args.work_dir, args.output_file)
    with atomic_open(path) as f:
        for query_id in sorted(predictions):
            f.write(prediction_line(query_id, predictions[query_id], dataset.samples[query_id][0]))
    print(f"saved {len(predictions)} predictions to {path}")
    print(f"time taken: {seconds:.1f} s ({len(predictions) / max(seconds, 1e-9):.2f} queries/s)")
    return path


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = validate(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    try:
        run(args)
    except (CheckpointError, E2EDataError, OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
