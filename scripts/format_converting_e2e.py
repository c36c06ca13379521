#!/usr/bin/env python
"""Raw E2E `MR||text` lines -> `{"context", "completion"}` jsonl, as microsoft/LoRA's script.

Usage: python scripts/format_converting_e2e.py data/e2e/train.txt data/e2e/train_formatted.jsonl
"""
import argparse
import sys

from shared.text.e2e_data import format_file
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, input_file_problems, output_file_problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="raw E2E file, one `MR||text` per line")
    parser.add_argument("output", help="formatted jsonl to write")
    args = parser.parse_args(argv)

    def run():
        check_outputs(input_file_problems("input", args.input)
                      + output_file_problems("output", args.output))
        n = format_file(args.input, args.output)
        print(f"wrote {n} lines to {args.output}")
    return run_script(run)


if __name__ == "__main__":
    sys.exit(main())
