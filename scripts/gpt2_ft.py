#!/usr/bin/env python
"""Fine-tune GPT-2 (+ LoRA) on E2E with the PyTorch or Jittor backend.

Takes microsoft/LoRA `examples/NLG/src/gpt2_ft.py`'s arguments plus `--backend`, e.g.
  python scripts/gpt2_ft.py --backend jittor --train_data data/e2e/train.jsonl \
      --valid_data data/e2e/valid.jsonl --model_card gpt2.md --init_checkpoint pretrained.bin \
      --lora_dim 4 --lora_alpha 32 --lora_dropout 0.1 --lr 0.0002 --max_epoch 5 ...
"""
import sys

from backends import training_backend
from shared.train.train_args import build_parser, validate
from shared.train.trainer import train
from shared.train.training_script import run_training_script


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    # validate first: a bad argument fails before the backend's framework is imported
    return run_training_script(parser, args,
                               lambda: train(validate(args), training_backend(args.backend)))


if __name__ == "__main__":
    sys.exit(main())
