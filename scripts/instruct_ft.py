#!/usr/bin/env python
"""Instruction-tune GPT-2 (+ LoRA) on Alpaca-format JSON with the PyTorch or Jittor backend,
then generate and score responses for the held-out test split (ROUGE-L, perplexity), e.g.
  python scripts/instruct_ft.py --backend torch --data ../shared/data/instruct/instruction-data.json \
      --init_checkpoint base.safetensors --lora_dim 8 --lora_alpha 16 --lr 0.001 --max_epoch 2 \
      --work_dir trained/instruct
Takes every flag of gpt2_ft.py except --train_data/--valid_data (the splits are written to
--data_out, default WORK_DIR/data); training is shared/train/trainer.py, so --resume, checkpoints,
the JSON-lines log and --tensorboard work as for E2E. Outputs in WORK_DIR: test_responses.jsonl
and instruct_eval.json.
"""
import sys

from backends import load_inference_model, training_backend
from shared.runtime.paths import DataDirError, resolve_data_path
from shared.tasks.instruct_task import build_instruct_parser, sampling_settings, train_and_evaluate
from shared.train.train_args import validate
from shared.train.training_script import run_training_script


def main(argv=None):
    parser = build_instruct_parser()
    args = parser.parse_args(argv)
    try:
        args.data = resolve_data_path(args.data, "INSTRUCT_DATA", flag="--data",
                                      what="instruction data (an Alpaca JSON file)")
    except DataDirError as exc:
        parser.error(str(exc))
    if args.no_eval and args.eval_only:
        parser.error("--no_eval and --eval_only exclude each other")
    try:  # checked now, not when the responses are generated after training
        sampling_settings(args)
    except ValueError as exc:
        parser.error(f"bad arguments:\n  {exc}")
    # the trainer's checks too, before the data is split (validate runs again before training)
    return run_training_script(parser, args, lambda: train_and_evaluate(
        validate(args, data_files=False), training_backend, load_inference_model))


if __name__ == "__main__":
    sys.exit(main())
