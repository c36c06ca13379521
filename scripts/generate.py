#!/usr/bin/env python
"""Sample continuations of a prompt from GPT-2 (+ LoRA) with either backend, e.g.
  python scripts/generate.py --backend torch --init_checkpoint model.pt --lora_dim 4 \
      --prompt "name : The Eagle | eatType : coffee shop | area : riverside" --add_bos \
      --temperature 0.8 --top_k 40 --num_samples 3
Filtering and drawing happen in numpy from seeded generators (shared/decode/sampling.py), so the two
backends print the same text for the same weights and --seed.
"""
import sys

from backends import load_inference_model
from shared.runtime.arg_types import (non_negative_int, positive_int, seed_int, temperature,
                                      top_p_mass)
from shared.model.checkpoint import CheckpointError
from shared.decode.inference_model import add_inference_model_args, inference_model_problems
from shared.decode.sampling import EOT_ID, SamplingSettings
from shared.runtime.entry_point import run_stoppable
from shared.text.tokenizer import VocabError, load_tokenizer
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default=None, help="prompt text (default: read from stdin)")
    p.add_argument("--add_bos", action="store_true",
                   help="append <|endoftext|> to the prompt, as gpt2_encode.py --add_bos does "
                        "after an E2E context (use it with E2E-fine-tuned models)")
    p.add_argument("--temperature", type=temperature, default=1.0, help="0: greedy")
    p.add_argument("--top_k", type=non_negative_int, default=0,
                   help="keep the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=top_p_mass, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--max_new_tokens", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=10)
    p.add_argument("--num_samples", type=positive_int, default=1)
    p.add_argument("--vocab", default=None,
                   help="GPT-2 vocab folder (encoder.json, vocab.bpe); default: GPT2_VOCAB_DIR "
                        "or the project's data folder")
    add_inference_model_args(p)
    return p


def settings_from_args(args) -> SamplingSettings:
    return SamplingSettings(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, eos_token_id=EOT_ID)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = inference_model_problems(args)
    if args.num_samples < 1:
        problems.append(f"--num_samples must be >= 1, got {args.num_samples}")
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    prompt = args.prompt if args.prompt is not None else sys.stdin.read().rstrip("\n")
    if not prompt and not args.add_bos:  # before the model loads
        parser.error("the prompt is empty: give --prompt TEXT (or text on stdin, or --add_bos)")
    try:
        tokenizer = load_tokenizer(args.vocab)
    except (VocabError, OSError) as exc:  # the message says how to get a vocabulary
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        prompt_ids = tokenizer.encode(prompt) + ([EOT_ID] if args.add_bos else [])
        loaded = load_inference_model(args)
        samples = loaded.sample(prompt_ids, settings, args.seed, args.num_samples)
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for index, tokens in enumerate(samples):
        if args.num_samples > 1:
            print(f"=== sample {index} ===")
        print(prompt + tokenizer.decode(tokens))
    return 0


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
