#!/usr/bin/env python
"""Beam samples -> E2E reference and prediction files, as microsoft/LoRA's src/gpt2_decode.py.

Usage: python scripts/gpt2_decode.py --vocab VOCAB_DIR --sample_file predict.jsonl
           --input_file test_formatted.jsonl --output_ref_file ref.txt
           --output_pred_file pred.txt [--tokenize] [--lower]
"""
import sys

from shared.runtime.atomic import atomic_group
from shared.decode.scorer_files import decode_files
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, input_file_problems, output_file_problems
from shared.text.tokenizer import load_tokenizer
from shared.runtime.config_parser import ConfigArgumentParser


def main(argv=None):
    parser = ConfigArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default=None,
                        help="GPT-2 vocab folder (encoder.json, vocab.bpe); default: "
                             "GPT2_VOCAB_DIR or the project's data folder")
    parser.add_argument("--sample_file", required=True,
                        help='beam output jsonl, {"id": i, "predict": [token ids]} per line')
    parser.add_argument("--input_file", required=True,
                        help='formatted jsonl, {"context": MR, "completion": text} per line')
    parser.add_argument("--output_ref_file", required=True, help="references to write")
    parser.add_argument("--output_pred_file", required=True, help="predictions to write")
    parser.add_argument("--tokenize", action="store_true",
                        help="space out non-word characters (LoRA's stardard_tokenize)")
    parser.add_argument("--lower", action="store_true", help="lowercase both sides")
    args = parser.parse_args(argv)

    def run():
        check_outputs([p for flag in ("sample_file", "input_file")
                       for p in input_file_problems(f"--{flag}", getattr(args, flag))]
                      + [p for flag in ("output_ref_file", "output_pred_file")
                         for p in output_file_problems(f"--{flag}", getattr(args, flag))])
        with atomic_group():  # both files, or neither
            n = decode_files(args.input_file, args.sample_file, load_tokenizer(args.vocab),
                             args.output_ref_file, args.output_pred_file,
                             tokenize=args.tokenize, lower=args.lower)
        print(f"wrote {n} reference groups to {args.output_ref_file} and {n} predictions to "
              f"{args.output_pred_file}")
    return run_script(run)


if __name__ == "__main__":
    sys.exit(main())
