#!/usr/bin/env python
"""Fine-tune GPT-2 (+ LoRA) on E2E with the PyTorch or Jittor backend.

Takes microsoft/LoRA `examples/NLG/src/gpt2_ft.py`'s arguments plus `--backend`, e.g.
  python scripts/gpt2_ft.py --backend jittor --train_data data/e2e/train.jsonl \
      --valid_data data/e2e/valid.jsonl --model_card gpt2.md --init_checkpoint pretrained.bin \
      --lora_dim 4 --lora_alpha 32 --lora_dropout 0.1 --lr 0.0002 --max_epoch 5 ...
"""
import sys

from backends import training_backend
from shared.checkpoint import CheckpointError
from shared.run_lock import RunFolderBusy
from shared.stop_signals import StopSignal, exit_status, raise_on_stop_signals
from shared.train_args import ArgumentProblem, build_parser, validate
from shared.trainer import TrainingError, TrainingInterrupted, train


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with raise_on_stop_signals():  # outside the training loop, whose own handler saves first
            validate(args)
            train(args, training_backend(args.backend))
    except ArgumentProblem as exc:
        parser.error(str(exc))
    except (TrainingError, CheckpointError, RunFolderBusy, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the work dir filled up or became unwritable mid-run
        print(f"error: {exc}; free space or fix permissions, then rerun with --resume",
              file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exit_status(exc.signum)
    except StopSignal as exc:
        print(f"{exc} outside the training loop; the checkpoints already in {args.work_dir} are "
              f"whole: rerun the same command (with --resume if it holds any)", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
