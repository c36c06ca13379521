"""Classification fine-tuning with the shared trainer: flags, datasets, evaluation, model card.

`scripts/classify_ft.py` runs the trainer of `shared/train/trainer.py` with the batches of
`shared/text/classify_data.py` and a backend's `ClassifierBackend` (torch_impl/classifier.py,
jittor_impl/classifier.py). After training the final weights are scored on the validation and
test splits (WORK_DIR/metrics.json: accuracy, precision, recall, F1, confusion matrix), and
WORK_DIR/classifier.json records what `scripts/classify.py` needs to rebuild the model.
"""
from __future__ import annotations

import json
import os

import numpy as np

from shared.runtime.arg_types import positive_int
from shared.runtime.atomic import write_json
from shared.model.config import GPT2Config
from shared.model.classifier_params import TRAINABLE_PARTS
from shared.text.classify_data import (BALANCE_MODES, LABELS, ClassifyDataset,
                                       classification_metrics, prepare_splits)
from shared.model.pretrained import checkpoint_config
from shared.runtime.run_lock import RunLock
from shared.text.tokenizer import load_tokenizer
from shared.runtime.paths import DataDirError, file_check, resolve_data_path
from shared.train.data_parallel import main_process_lock, processes_of
from shared.train.train_args import build_parser, lora_flag_problems
from shared.train.trainer import Trainer

SPAM_ENV = "SMS_SPAM_DATA"
CLASSIFY_RESUME_KEYS = ("data", "balance", "split", "trainable", "max_len", "class_weights")
CARD_NAME = "classifier.json"


def build_classify_parser():
    p = build_parser(data_args=False, description="Fine-tune GPT-2 as a classifier (spam/ham) "
                     "with the PyTorch or Jittor backend")
    p.add_argument("--data", default=None, help=f"`label<TAB>text` file (default: ${SPAM_ENV})")
    p.add_argument("--split", default="0.7,0.1,0.2", help="train,valid,test fractions")
    p.add_argument("--balance", default="undersample", choices=BALANCE_MODES,
                   help="undersample the larger class (before the split), weight the loss by "
                        "class, or neither")
    p.add_argument("--trainable", default="last", choices=TRAINABLE_PARTS,
                   help="last: head + last block + final LayerNorm; all: every weight; "
                        "lora: LoRA + head (give --lora_dim)")
    p.add_argument("--max_len", type=positive_int, default=128, help="tokens per text (longer ones are "
                   "cut, and counted)")
    p.add_argument("--fixed_width", action="store_true", help="pad every batch to --max_len "
                   "(one shape; Jittor then compiles its kernels once)")
    p.add_argument("--vocab", default=None, help="GPT-2 vocab folder (else GPT2_VOCAB_DIR)")
    p.set_defaults(lr=5e-5, weight_decay=0.1, valid_batch_size=16, eval_interval=100000,
                   save_interval=100000)
    return p


def classify_problems(args) -> list:
    """Task-specific argument problems; fills derived values (data path, seq_len, classes)."""
    problems = lora_flag_problems(args)  # --lora_dim/--lora_alpha, from the checkpoint too
    try:
        args.data = resolve_data_path(args.data, SPAM_ENV, flag="--data", what="label<TAB>text file",
                                      check=file_check)
    except DataDirError as exc:
        problems.append(str(exc))
    try:
        args.split_fractions = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        problems.append(f"--split must be three comma-separated fractions, got {args.split!r}")
    if args.max_len <= 0:
        problems.append(f"--max_len must be positive, got {args.max_len}")
    if args.trainable == "lora" and args.lora_dim <= 0:
        problems.append("--trainable lora needs --lora_dim > 0")
    if args.trainable != "lora" and args.lora_dim > 0:
        problems.append(f"--lora_dim {args.lora_dim} with --trainable {args.trainable}: LoRA "
                        f"trains with --trainable lora only")
    if getattr(args, "peft", None) not in (None, "lora", "full"):
        problems.append(f"--peft {args.peft} is for the language-model scripts (gpt2_ft.py, "
                        f"instruct_ft.py); the classifier chooses its weights with --trainable")
    if args.label_smooth:
        problems.append("--label_smooth applies to the language-model loss only")
    args.seq_len, args.num_classes = args.max_len, len(LABELS)
    return problems


def classify_datasets(args, tokenizer):
    """Splits by seed; (train, valid, test) datasets; sets args.class_weights."""
    splits, weights = prepare_splits(args.data, args.random_seed, args.balance,
                                     args.split_fractions)
    args.class_weights = weights
    counts = {name: np.bincount([e[0] for e in part], minlength=len(LABELS)).tolist()
              for name, part in splits.items()}
    print(f"data {args.data}: {', '.join(f'{n} {c}' for n, c in counts.items())} "
          f"(per class {list(LABELS)}; balance {args.balance}"
          + (f", class weights {[round(w, 4) for w in weights]}" if weights else "") + ")",
          flush=True)
    sizes = {"train": args.train_batch_size, "valid": args.valid_batch_size,
             "test": args.valid_batch_size}
    return {name: ClassifyDataset(part, tokenizer, sizes[name], args.max_len,
                                  f"{name} split of {args.data}", args.fixed_width)
            for name, part in splits.items()}


def evaluate(predict_logits, dataset) -> dict:
    """Metrics of a model (`predict_logits(batch) -> numpy (B, classes)`) on a dataset."""
    predicted = []
    for batch in dataset.eval_batches():
        predicted.append(np.argmax(predict_logits(batch), axis=-1))
    return classification_metrics(dataset.labels, np.concatenate(predicted))


def write_model_card(args, summary, labels=LABELS, name=CARD_NAME, **extra):
    """WORK_DIR/`name` (classifier.json): the model shape, labels and final checkpoint for
    classify.py (and, one output named `reward`, a reward model for its judges); `extra`: the
    task's own entries (classification's max_len)."""
    card = {"labels": list(labels), "checkpoint": os.path.basename(summary["final_checkpoint"]),
            "model_card": args.model_card, "n_embd": args.n_embd, "n_layer": args.n_layer,
            "n_head": args.n_head, "lora_dim": args.lora_dim, "lora_alpha": args.lora_alpha,
            **extra, "trainable": args.trainable, "backend": args.backend}
    write_json(os.path.join(args.work_dir, name), card)
    return card


def train_and_score(args, backend_for):
    """Train (`backend_for(args.backend)`: the backend's `ClassifierBackend`), score the final
    weights on the validation and test splits into WORK_DIR/metrics.json, write the model card
    and print the scores; the run folder is locked meanwhile."""
    with main_process_lock(args.work_dir, processes_of(args), RunLock):
        tokenizer = load_tokenizer(args.vocab)
        data = classify_datasets(args, tokenizer)
        trainer = Trainer(args, backend_for(args.backend), datasets=(data["train"], data["valid"]),
                          resume_keys=CLASSIFY_RESUME_KEYS)
        summary = trainer.train()
        if not trainer.processes.is_main:  # under several processes rank 0 alone scores
            return None
        metrics = {name: evaluate(trainer.backend.predict_logits, data[name])
                   for name in ("valid", "test")}
        metrics.update(backend=args.backend, steps=summary["steps"],
                       valid_loss=summary["valid_loss"])
        write_json(os.path.join(args.work_dir, "metrics.json"), metrics)
        write_model_card(args, summary, max_len=args.max_len)
    for name in ("valid", "test"):
        m = metrics[name]
        print(f"{name}: accuracy {m['accuracy']:.4f}, precision {m['precision']:.4f}, recall "
              f"{m['recall']:.4f}, F1 {m['f1']:.4f}, confusion {m['confusion_matrix']} "
              f"(rows true {m['labels']}, columns predicted)")
    return metrics


def read_model_card(model_dir, name=CARD_NAME, made_by="classify_ft.py",
                    flag="--model_dir") -> dict:
    """The card `write_model_card` left in `model_dir` (given as `flag`), its checkpoint made a
    path."""
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {flag} must be the --work_dir of a "
                                f"finished {made_by} run")
    with open(path) as f:
        card = json.load(f)
    card["checkpoint"] = os.path.join(model_dir, card["checkpoint"])
    return card


def card_config(card) -> GPT2Config:
    """The model shape a model card records (the classifier is built from it); a run that
    started from a pretrained folder has its config.json beside the checkpoint (the trainer
    writes it), which gives the model as for --init_checkpoint."""
    shape = dict(n_embd=card["n_embd"], n_layer=card["n_layer"], n_head=card["n_head"])
    lora = dict(lora_attn_dim=card["lora_dim"], lora_attn_alpha=card["lora_alpha"])
    found = checkpoint_config(card["checkpoint"]) if os.path.exists(card["checkpoint"]) else None
    if found is not None:
        return found.model_config(**shape, **lora)
    return GPT2Config.from_model_card(card["model_card"], **shape, **lora)
