#!/usr/bin/env python
"""Tune GPT-2 (+ LoRA) on ranked response pairs with DPO, PyTorch or Jittor backend, e.g.
  python scripts/dpo_ft.py --backend torch \
      --data ../shared/data/instruct/instruction-data-with-preference.json --drop_equal_pairs \
      --init_checkpoint trained/instruct/model.N.pt --lora_dim 8 --beta 0.1 --lr 5e-5 \
      --max_epoch 1 --work_dir trained/dpo
The reference is the starting model (--init_checkpoint, or the seeded init), kept frozen; the
loss is -log sigmoid(beta * ((log pi_c - log ref_c) - (log pi_r - log ref_r))), ln 2 at the
first step. Takes gpt2_ft.py's flags (no --train_data/--valid_data: the splits come from --data
and --split_seed); the final weights' held-out implicit-reward accuracy and margin go to
WORK_DIR/dpo_eval.json.
"""
import sys

from backends import dpo_backend
from shared.tasks.preference_task import build_preference_parser, preference_problems, train_and_score
from shared.train.train_args import validate
from shared.train.training_script import run_training_script


def main(argv=None):
    parser = build_preference_parser("dpo")
    args = parser.parse_args(argv)
    problems = preference_problems(args, "dpo")
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    # the trainer's checks too, before the data is read (validate runs again in the trainer)
    return run_training_script(parser, args, lambda: train_and_score(
        validate(args, data_files=False), "dpo", dpo_backend))


if __name__ == "__main__":
    sys.exit(main())
