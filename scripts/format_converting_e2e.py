#!/usr/bin/env python
"""Raw E2E `MR||text` lines -> `{"context", "completion"}` jsonl, as microsoft/LoRA's script.

Usage: python scripts/format_converting_e2e.py data/e2e/train.txt data/e2e/train_formatted.jsonl
"""
import argparse

from shared.e2e_data import E2EDataError, format_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="raw E2E file, one `MR||text` per line")
    parser.add_argument("output", help="formatted jsonl to write")
    args = parser.parse_args(argv)
    try:
        n = format_file(args.input, args.output)
    except (E2EDataError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    print(f"wrote {n} lines to {args.output}")


if __name__ == "__main__":
    main()
