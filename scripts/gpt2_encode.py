#!/usr/bin/env python
"""Formatted E2E jsonl -> GPT-2 token ids, as microsoft/LoRA's gpt2_encode.py.

Usage: python scripts/gpt2_encode.py --input data/e2e/train_formatted.jsonl
           --output data/e2e/train.jsonl --add_bos --add_eos [--vocab DIR]
"""
import argparse

from shared.e2e_data import E2EDataError, encode_file
from shared.tokenizer import VocabError, load_tokenizer


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
    try:
        tokenizer = load_tokenizer(args.vocab)
        n = encode_file(args.input, args.output, tokenizer, args.add_bos, args.add_eos)
    except (E2EDataError, VocabError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"wrote {n} lines to {args.output}")


if __name__ == "__main__":
    main()
