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
from shared.tasks.preference_task import run_preference_script


def main(argv=None):
    return run_preference_script("dpo", dpo_backend, argv)


if __name__ == "__main__":
    sys.exit(main())
