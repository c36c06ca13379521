#!/usr/bin/env python
"""Paired bootstrap intervals of each E2E metric's torch - jittor difference, with a seed band.

  python scripts/metric_intervals.py --references e2e_ref.txt --torch torch_pred.txt \
      --jittor jittor_pred.txt [--torch_seed2 other_torch_pred.txt] --out DIR
References in measure_scores.py's format (groups separated by an empty line) or a raw E2E
split (`--references test.txt --raw`). Writes DIR/metric_intervals.{md,json} and
DIR/report_section.md (the section work.sh's report includes).
"""
import sys

from alignment.interval_report import intervals_from_files
from alignment.report_sections import metric_intervals_section
from shared.runtime.arg_types import positive_int, seed_int
from shared.runtime.atomic import atomic_group
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, input_file_problems, output_dir_problems
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--references", required=True)
    p.add_argument("--raw", action="store_true", help="--references is a raw E2E .txt split")
    p.add_argument("--torch", required=True, help="torch predictions, one line per MR")
    p.add_argument("--jittor", required=True, help="jittor predictions, one line per MR")
    p.add_argument("--torch_seed2", default=None, help="a second torch run (seed band)")
    p.add_argument("--resamples", type=positive_int, default=1000)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", required=True)
    return p


def run(args):
    check_outputs([p for flag in ("references", "torch", "jittor", "torch_seed2")
                   if getattr(args, flag) for p in input_file_problems(f"--{flag}", getattr(args, flag))]
                  + output_dir_problems("--out", args.out))
    predictions = {"torch": args.torch, "jittor": args.jittor, "torch_seed2": args.torch_seed2}
    with atomic_group(args.out):  # its three files, or none
        result = intervals_from_files(args.references, predictions, args.out, raw=args.raw,
                                      resamples=args.resamples, seed=args.seed)
    print(metric_intervals_section(result))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_script(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
