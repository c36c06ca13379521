#!/usr/bin/env python
"""Tune an instruction-tuned GPT-2 (+ LoRA) with PPO against a reward model (RLHF's last step),
PyTorch or Jittor backend, e.g.
  python scripts/ppo_ft.py --backend torch \
      --data ../shared/data/instruct/instruction-data-with-preference.json --drop_equal_pairs \
      --init_checkpoint trained/instruct/model.N.pt --lora_dim 8 \
      --reward_model trained/reward --rollout_batch 16 --train_batch_size 4 \
      --response_len 32 --kl_coef 0.2 --lr 1e-4 --max_epoch 20 --work_dir trained/ppo
The policy starts from --init_checkpoint (the SFT model with its LoRA weights, which it trains
on, plus a value head; --lora_dim 0 trains every weight); a frozen copy is the KL penalty's
reference. An epoch is one PPO
iteration: a rollout of --rollout_batch sampled responses scored by the reward model, then
--ppo_epochs passes of minibatch updates (shared/tasks/ppo_task.py). Takes gpt2_ft.py's flags
(no --train_data/--valid_data: the prompts come from --data and --split_seed); the tuned and the
starting model's held-out rewards and win rate go to WORK_DIR/ppo_eval.json.
"""
import sys

from backends import ppo_backend
from shared.tasks.ppo_task import build_ppo_parser, ppo_problems, train_ppo
from shared.train.train_args import validate
from shared.train.training_script import run_training_script


def main(argv=None):
    parser = build_ppo_parser()
    args = parser.parse_args(argv)
    problems = ppo_problems(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    # the trainer's checks too, before the data is read (validate runs again in the trainer)
    return run_training_script(parser, args, lambda: train_ppo(
        validate(args, data_files=False), ppo_backend))


if __name__ == "__main__":
    sys.exit(main())
