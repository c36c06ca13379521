#!/usr/bin/env python
"""Paired bootstrap intervals of each E2E metric's torch - jittor difference, with a seed band.

  python scripts/metric_intervals.py --references e2e_ref.txt --torch torch_pred.txt \
      --jittor jittor_pred.txt [--torch_seed2 other_torch_pred.txt] --out DIR
References in measure_scores.py's format (groups separated by an empty line) or a raw E2E
split (`--references test.txt --raw`). Writes DIR/metric_intervals.{md,json}.
"""
import argparse
import os
import sys

from alignment.metric_equivalence import metric_equivalence
from alignment.report_sections import metric_intervals_section
from shared.atomic import write_json, write_text
from shared.metrics.e2e import read_predictions, read_references


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--references", required=True)
    p.add_argument("--raw", action="store_true", help="--references is a raw E2E .txt split")
    p.add_argument("--torch", required=True, help="torch predictions, one line per MR")
    p.add_argument("--jittor", required=True, help="jittor predictions, one line per MR")
    p.add_argument("--torch_seed2", default=None, help="a second torch run (seed band)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.resamples < 1000:
        sys.exit(f"metric_intervals.py: --resamples must be >= 1000, got {args.resamples}")
    if args.raw:
        from shared.decode import group_references
        from shared.e2e_data import read_raw
        refs = list(group_references(read_raw(args.references), args.references).values())
    else:
        refs = read_references(args.references)
    hyps = {k: read_predictions(getattr(args, k)) if getattr(args, k) else None
            for k in ("torch", "jittor", "torch_seed2")}
    for name, hyp in hyps.items():
        if hyp is not None and len(hyp) != len(refs):
            sys.exit(f"metric_intervals.py: --{name} has {len(hyp)} lines for {len(refs)} MRs")
    result = metric_equivalence(refs, hyps["torch"], hyps["jittor"], hyps["torch_seed2"],
                                resamples=args.resamples, seed=args.seed)
    result["inputs"] = {k: getattr(args, k) for k in ("references", "torch", "jittor", "torch_seed2")}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "metric_intervals.json"), result)
    text = metric_intervals_section(result)
    write_text(os.path.join(args.out, "metric_intervals.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
