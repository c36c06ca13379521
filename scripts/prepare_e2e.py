#!/usr/bin/env python
"""Format and encode (add_bos + add_eos) the E2E train/valid/test splits in one go.

Writes {split}_formatted.jsonl and {split}.jsonl to --out_dir, skipping splits already up to date.
"""
import argparse
import os
import sys

from shared.text.e2e_data import prepare_e2e
from shared.runtime.entry_point import run_script
from shared.runtime.paths import DEFAULT_E2E_DIR, E2E_SPLITS, resolve_e2e_dir
from shared.runtime.preflight import check_outputs, output_dir_problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None,
                        help="folder with {train,valid,test}.txt (default: E2E_DATA_DIR, "
                             "else data/e2e)")
    parser.add_argument("--out_dir", default=DEFAULT_E2E_DIR,
                        help="where the jsonl files go (default: data/e2e)")
    parser.add_argument("--vocab", default=None,
                        help="folder with encoder.json + vocab.bpe (default: GPT2_VOCAB_DIR, "
                             "data/gpt2, else tiktoken's gpt2 download)")
    args = parser.parse_args(argv)

    def run():
        check_outputs(output_dir_problems("--out_dir", args.out_dir))
        data_dir = resolve_e2e_dir(args.data_dir)
        written = prepare_e2e(data_dir, args.out_dir, vocab_dir=args.vocab)
        for split in E2E_SPLITS:
            state = "written" if split in written else "up to date, skipped"
            print(f"{split}: {state} ({os.path.join(args.out_dir, split + '.jsonl')})")
    return run_script(run)


if __name__ == "__main__":
    sys.exit(main())
