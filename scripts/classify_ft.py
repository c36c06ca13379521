#!/usr/bin/env python
"""Fine-tune GPT-2 as a spam/ham classifier with the PyTorch or Jittor backend, e.g.
  python scripts/classify_ft.py --backend torch --data SMSSpamCollection \
      --init_checkpoint gpt2.safetensors --trainable last --max_epoch 5 --lr 5e-5 \
      --work_dir runs/classify-torch
The head reads the last real token's hidden state; --trainable picks the trained part (last:
head + last block + final LayerNorm; all; lora: LoRA + head). Splits come from --random_seed;
the final weights are scored on the validation and test splits into WORK_DIR/metrics.json.
"""
import os
import sys

from shared.atomic import write_json
from shared.checkpoint import CheckpointError
from shared.classify_task import (CLASSIFY_RESUME_KEYS, build_classify_parser,
                                  classify_datasets, classify_problems, evaluate,
                                  write_model_card)
from shared.tokenizer import VocabError, load_tokenizer
from shared.train_args import ArgumentProblem
from shared.trainer import Trainer, TrainingError, TrainingInterrupted


def classifier_backend(name):
    """The backend's ClassifierBackend, importing only that framework."""
    if name == "torch":
        from torch_impl.classifier import ClassifierBackend
    else:
        from jittor_impl.classifier import ClassifierBackend
    return ClassifierBackend


def main(argv=None):
    parser = build_classify_parser()
    args = parser.parse_args(argv)
    problems = classify_problems(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    try:
        tokenizer = load_tokenizer(args.vocab)
        data = classify_datasets(args, tokenizer)
        trainer = Trainer(args, classifier_backend(args.backend),
                          datasets=(data["train"], data["valid"]), resume_keys=CLASSIFY_RESUME_KEYS)
        summary = trainer.train()
        metrics = {name: evaluate(trainer.backend.predict_logits, data[name])
                   for name in ("valid", "test")}
        metrics.update(backend=args.backend, steps=summary["steps"],
                       valid_loss=summary["valid_loss"])
        write_json(os.path.join(args.work_dir, "metrics.json"), metrics)
        write_model_card(args, summary)
    except ArgumentProblem as exc:
        parser.error(str(exc))
    except (TrainingError, CheckpointError, VocabError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    for name in ("valid", "test"):
        m = metrics[name]
        print(f"{name}: accuracy {m['accuracy']:.4f}, precision {m['precision']:.4f}, recall "
              f"{m['recall']:.4f}, F1 {m['f1']:.4f}, confusion {m['confusion_matrix']} "
              f"(rows true {m['labels']}, columns predicted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
