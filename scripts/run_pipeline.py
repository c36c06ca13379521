#!/usr/bin/env python
"""The end-to-end alignment run behind `bash work.sh`: both backends, identical weights and seeds.

The stages, presets and their engine live in shared/pipeline/engine.py; this script parses the flags
(`bash work.sh --help` lists them) and runs it.
"""
import argparse
import sys

from shared.runtime.arg_types import positive_int
from shared.pipeline.engine import Pipeline, run_to_end
from shared.pipeline.run_flags import run_parser
from shared.pipeline.task_pipelines import TASKS


def build_parser():
    p = run_parser(Pipeline,
                   "End-to-end E2E run on both backends from identical weights and seeds: data, "
                   "base model, LoRA fine-tuning, beam search, metrics, report, plots.",
                   "pretrained GPT-2 (HF or microsoft/LoRA layout): skips base training",
                   exact_dropout=True, e2e_data=True)
    p.add_argument("--task", default="e2e", choices=TASKS,
                   help="e2e: this pipeline; pretrain / classify / instruct / peft / dpo / rlhf: their own pipelines "
                        "(`--task pretrain --help` lists their flags)")
    p.add_argument("--seed_band", action="store_true",
                   help="also fine-tune and search with torch at random_seed + 1, so the metric "
                        "intervals get a seed band (one more training run)")
    p.add_argument("--nproc", type=positive_int, default=1,
                   help="train (base model and LoRA) on N processes: torchrun for torch, mpirun "
                        "for jittor; the preset's batches stay the global ones, N must divide them")
    return p


def task_and_rest(argv):
    """(--task value, the other arguments): the other tasks parse their own flags."""
    picker = argparse.ArgumentParser(add_help=False)
    picker.add_argument("--task", default="e2e", choices=TASKS)
    known, rest = picker.parse_known_args(argv)
    return known.task, rest


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    task, rest = task_and_rest(argv)
    if task != "e2e":
        from shared.pipeline.task_pipelines import main as task_main
        return task_main(task, rest)
    args = build_parser().parse_args(argv)
    return run_to_end(lambda: Pipeline(args))


if __name__ == "__main__":
    sys.exit(main())
