#!/usr/bin/env python
"""Formatted E2E jsonl -> GPT-2 token ids, as microsoft/LoRA's gpt2_encode.py.

Usage: python scripts/gpt2_encode.py --input data/e2e/train_formatted.jsonl
           --output data/e2e/train.jsonl --add_bos --add_eos [--vocab DIR]
"""
import argparse
import sys

from shared.text.e2e_data import encode_file
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, input_file_problems, output_file_problems
from shared.text.tokenizer import load_tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="formatted jsonl")
    parser.add_argument("--output", required=True, help="encoded jsonl to write")
    parser.add_argument("--vocab", default=None,
                        help="folder with encoder.json + vocab.bpe (default: GPT2_VOCAB_DIR, "
                             "data/gpt2, else tiktoken's gpt2 download)")
    parser.add_argument("--add_bos", action="store_true", help="append <|endoftext|> to context")
    parser.add_argument("--add_eos", action="store_true",
                        help="append <|endoftext|> to completion")
    args = parser.parse_args(argv)

    def run():
        check_outputs(input_file_problems("--input", args.input)
                      + output_file_problems("--output", args.output))
        tokenizer = load_tokenizer(args.vocab)
        n = encode_file(args.input, args.output, tokenizer, args.add_bos, args.add_eos)
        print(f"wrote {n} lines to {args.output}")
    return run_script(run)


if __name__ == "__main__":
    sys.exit(main())
