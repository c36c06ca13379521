#!/usr/bin/env python
"""Plot the loss curves of one or two runs (and their difference), optionally the LR schedule.

A and B are `train_log.jsonl` files, run folders holding one, or microsoft/LoRA gpt2_ft.py
stdout logs. Example:
    python scripts/plot_loss.py runs/torch runs/jittor --labels torch jittor --out loss.png
"""
import argparse
import sys

from shared.runtime.atomic import atomic_group
from shared.runtime.entry_point import run_script
from shared.pipeline.plotting import plot_loss_comparison, plot_lr_schedule
from shared.runtime.preflight import check_outputs, output_file_problems
from shared.train.trainlog import read_log


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", metavar="LOG", help="one or two logs or run folders (A [B])")
    p.add_argument("--labels", nargs="+", default=None, help="legend label of each log")
    p.add_argument("--out", default="loss.png", help="loss plot (PNG)")
    p.add_argument("--lr_out", default=None, help="also plot the learning rate to this PNG")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    if len(args.logs) > 2:
        p.error(f"give one or two logs, got {len(args.logs)}")
    if args.labels is not None and len(args.labels) != len(args.logs):
        p.error(f"--labels needs {len(args.logs)} label(s), got {len(args.labels)}")
    return args


def run(args):
    check_outputs([p for flag, path in (("--out", args.out), ("--lr_out", args.lr_out)) if path
                   for p in output_file_problems(flag, path)])
    labels = args.labels or [None] * len(args.logs)
    logs = [read_log(path, label=label) for path, label in zip(args.logs, labels)]
    with atomic_group():  # both plots, or neither
        written = [plot_loss_comparison(logs[0], logs[1] if len(logs) > 1 else None, args.out,
                                        title=args.title)]
        if args.lr_out:
            written.append(plot_lr_schedule(logs, args.lr_out))
    for path in written:
        print("wrote", path)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_script(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
