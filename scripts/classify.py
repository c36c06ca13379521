#!/usr/bin/env python
"""Classify texts with a model fine-tuned by classify_ft.py, on either backend, e.g.
  python scripts/classify.py --backend jittor --model_dir runs/classify-torch \
      --text "You won a free cruise! Text WIN to 80086"
Texts come from --text (repeatable), else one per line from stdin; each prints as
`label<TAB>probability<TAB>text`. With --eval_file (a `label<TAB>text` file) the texts are scored
instead and the metrics (accuracy, precision, recall, F1, confusion matrix) go to --json.
"""
import sys

import numpy as np

from backends import load_classifier
from shared.runtime.arg_types import positive_int
from shared.runtime.atomic import write_json
from shared.model.checkpoint import CheckpointError
from shared.text.classify_data import ClassifyDataError, ClassifyDataset, read_labelled
from shared.tasks.classify_task import evaluate, read_model_card
from shared.runtime.environment import default_device, device_problems
from shared.runtime.preflight import input_file_problems, output_file_problems
from shared.runtime.entry_point import run_stoppable
from shared.text.tokenizer import VocabError, load_tokenizer
from shared.train.train_args import BACKENDS
from shared.runtime.config_parser import ConfigArgumentParser


def build_parser():
    p = ConfigArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"])
    p.add_argument("--model_dir", required=True, help="the --work_dir of a classify_ft.py run")
    p.add_argument("--text", action="append", default=None, help="a text to classify")
    p.add_argument("--eval_file", default=None, help="`label<TAB>text` file to score")
    p.add_argument("--json", default=None, help="where --eval_file's metrics go")
    p.add_argument("--batch_size", type=positive_int, default=16)
    p.add_argument("--vocab", default=None, help="GPT-2 vocab folder (else GPT2_VOCAB_DIR)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not args.eval_file:
        parser.error("--json goes with --eval_file")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be positive, got {args.batch_size}")
    args.device = args.device or default_device()
    problems = device_problems(args.device)
    problems += input_file_problems("--eval_file", args.eval_file) if args.eval_file else []
    problems += output_file_problems("--json", args.json) if args.json else []
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    try:
        card = read_model_card(args.model_dir)
        tokenizer = load_tokenizer(args.vocab)
        predict_logits = load_classifier(args.backend, args.device, card)
        if args.eval_file:
            data = ClassifyDataset(read_labelled(args.eval_file, tuple(card["labels"])), tokenizer,
                                   args.batch_size, card["max_len"], args.eval_file)
            metrics = dict(evaluate(predict_logits, data), backend=args.backend,
                           data=args.eval_file)
            if args.json:
                write_json(args.json, metrics)
            print(f"accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
                  f"recall {metrics['recall']:.4f}, F1 {metrics['f1']:.4f}, confusion "
                  f"{metrics['confusion_matrix']}")
            return 0
        texts = args.text if args.text else [line.rstrip("\n") for line in sys.stdin]
        texts = [t for t in texts if t.strip()]
        if not texts:
            parser.error("no text to classify: give --text or lines on stdin")
        data = ClassifyDataset([(0, t, i + 1) for i, t in enumerate(texts)], tokenizer,
                               args.batch_size, card["max_len"], "input")
        logits = np.concatenate([predict_logits(b) for b in data.eval_batches()])
    except (ClassifyDataError, CheckpointError, VocabError, OSError, RuntimeError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for text, row in zip(texts, probs):
        label = int(np.argmax(row))
        print(f"{card['labels'][label]}\t{row[label]:.4f}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
