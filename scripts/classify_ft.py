#!/usr/bin/env python
"""Fine-tune GPT-2 as a spam/ham classifier with the PyTorch or Jittor backend, e.g.
  python scripts/classify_ft.py --backend torch --data SMSSpamCollection \
      --init_checkpoint gpt2.safetensors --trainable last --max_epoch 5 --lr 5e-5 \
      --work_dir runs/classify-torch
The head reads the last real token's hidden state; --trainable picks the trained part (last:
head + last block + final LayerNorm; all; lora: LoRA + head). Splits come from --random_seed;
the final weights are scored on the validation and test splits into WORK_DIR/metrics.json.
"""
import sys

from backends import classifier_backend
from shared.tasks.classify_task import build_classify_parser, classify_problems, train_and_score
from shared.train.train_args import validate
from shared.train.training_script import run_training_script


def main(argv=None):
    parser = build_classify_parser()
    args = parser.parse_args(argv)
    problems = classify_problems(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    # the trainer's checks too, before the data is read (validate runs again in the trainer)
    return run_training_script(parser, args, lambda: train_and_score(
        validate(args, data_files=False), classifier_backend),
                               disk_hint=False)


if __name__ == "__main__":
    sys.exit(main())
