#!/usr/bin/env python
"""Pretrain GPT-2 on raw text with the PyTorch or Jittor backend, e.g.
  python scripts/pretrain.py --backend jittor --text the-verdict.txt --n_embd 64 --n_layer 2 \
      --n_head 2 --seq_len 64 --stride 64 --max_epoch 10 --lr 0.001 --sample_every 50 \
      --temperature 0.8 --top_k 20 --work_dir runs/pretrain-jittor
Windows of the files' token stream train every weight (from a seeded init or --init_checkpoint);
the tail (--valid_fraction) gives the validation loss and perplexity; samples use the seeded
numpy sampler, so both backends print the same text for the same weights.
"""
import os
import sys

from backends import training_backend
from shared.tasks.pretrain_task import build_pretrain_parser, pretrain, pretrain_problems
from shared.train.train_args import validate
from shared.train.training_script import run_training_script


def main(argv=None):
    parser = build_pretrain_parser()
    args = parser.parse_args(argv)
    problems = pretrain_problems(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    args.train_data = os.pathsep.join(args.text)  # recorded in run_config.json
    # the trainer's checks too, before the text is read (validate runs again in the trainer)
    return run_training_script(parser, args,
                               lambda: pretrain(validate(args, data_files=False), training_backend),
                               disk_hint=False)


if __name__ == "__main__":
    sys.exit(main())
