#!/usr/bin/env python
"""Train a reward model on ranked response pairs with the PyTorch or Jittor backend, e.g.
  python scripts/reward_ft.py --backend torch \
      --data ../shared/data/instruct/instruction-data-with-preference.json --drop_equal_pairs \
      --init_checkpoint trained/instruct/model.N.pt --lora_dim 8 --lr 1e-4 --max_epoch 1 \
      --work_dir trained/reward
GPT-2 (+ LoRA, or every weight: --trainable) with a scalar head on the last real token, loss
-log sigmoid(r_chosen - r_rejected - margin). Takes gpt2_ft.py's flags (no --train_data/
--valid_data: the splits come from --data and --split_seed); the final weights' held-out pairwise
accuracy goes to WORK_DIR/reward_eval.json.
"""
import sys

from backends import reward_backend
from shared.tasks.preference_task import run_preference_script


def main(argv=None):
    return run_preference_script("reward", reward_backend, argv)


if __name__ == "__main__":
    sys.exit(main())
