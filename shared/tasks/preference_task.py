"""Preference tuning with the shared trainer: a reward model (`scripts/reward_ft.py`) and DPO
(`scripts/dpo_ft.py`), their flags, data splits, training and held-out scores.

Both read a preference JSON (shared/text/preference_data.py), split it by `--split_seed` as
instruction tuning does, and train with shared/train/trainer.py (so --resume, checkpoints, the JSON-lines
log, --tensorboard and stop signals work as for E2E) with a backend's `RewardBackend` or
`DPOBackend` (torch_impl/preference.py, jittor_impl/preference.py). The log's train and valid
records carry the task's metrics next to the loss (`reward_chosen`, `reward_rejected`,
`reward_accuracy`, `reward_margin` for the reward model; `rewards_chosen`, `rewards_rejected`,
`rewards_accuracy`, `rewards_margin`, DPO's implicit rewards beta * log(pi / ref)). After training
the final weights are scored on the held-out test split: WORK_DIR/reward_eval.json (pairwise
accuracy, mean margin and rewards) or WORK_DIR/dpo_eval.json (loss, implicit-reward accuracy and
margin).
"""
from __future__ import annotations

import os

from shared.runtime.arg_types import non_negative_float, positive_float
from shared.runtime.atomic import write_json
from shared.model.classifier_params import TRAINABLE_PARTS
from shared.runtime.paths import DataDirError, file_check, resolve_data_path
from shared.runtime.run_lock import RunLock
from shared.tasks.classify_task import read_model_card, write_model_card
from shared.tasks.instruct_task import add_split_args
from shared.text.preference_data import PreferenceDataset, split_preference_entries
from shared.text.tokenizer import load_tokenizer
from shared.train.train_args import build_parser, lora_flag_problems, validate
from shared.train.trainer import Trainer
from shared.train.training_script import run_training_script

PREFERENCE_ENV = "PREFERENCE_DATA"
DATA_RESUME_KEYS = ("data", "split_seed", "valid_fraction", "test_fraction", "limit",
                    "drop_equal_pairs", "fixed_width")
REWARD_CARD = "reward_model.json"  # what a judge or PPO reads to load the reward model
TASKS = {"reward": {"resume_keys": ("margin", "trainable"), "eval_file": "reward_eval.json",
                    "prefix": "reward_"},
         "dpo": {"resume_keys": ("beta",), "eval_file": "dpo_eval.json", "prefix": "rewards_"}}


def build_preference_parser(task):
    """gpt2_ft.py's flags (no --train_data/--valid_data) plus the preference data's and the
    task's own (`task`: "reward" or "dpo")."""
    what = {"reward": "Train a reward model (GPT-2 + a scalar head on the last real token) on "
                      "ranked response pairs",
            "dpo": "Tune GPT-2 (+ LoRA) on ranked response pairs with DPO"}[task]
    p = build_parser(data_args=False, description=f"{what}, with the PyTorch or Jittor backend")
    add_preference_data_flags(p)
    t = p.add_argument_group(f"{task} settings")
    if task == "reward":
        t.add_argument("--margin", type=non_negative_float, default=0.0,
                       help="loss -log sigmoid(r_chosen - r_rejected - margin)")
        t.add_argument("--trainable", default=None, choices=TRAINABLE_PARTS,
                       help="the trained part as for classify_ft.py (default: lora with "
                            "--lora_dim > 0, else all)")
    else:
        t.add_argument("--beta", type=positive_float, default=0.1,
                       help="DPO's beta: the strength of the pull towards the reference")
    p.set_defaults(seq_len=256, valid_batch_size=8, eval_interval=100000, save_interval=100000)
    return p


def add_preference_data_flags(p):
    """--data, --vocab and the split's flags (reward_ft.py, dpo_ft.py and ppo_ft.py share them)."""
    g = p.add_argument_group("preference data")
    g.add_argument("--data", default=None, help="JSON list of {instruction, input, chosen, "
                   f"rejected}} (default: ${PREFERENCE_ENV})")
    g.add_argument("--vocab", default=None, help="GPT-2 vocab folder (default: GPT2_VOCAB_DIR)")
    add_split_args(g, "seed of the train/valid/test split (instruct_ft.py's)")
    g.add_argument("--drop_equal_pairs", action="store_true",
                   help="leave out entries whose chosen and rejected are equal (default: refuse "
                        "them; the source project's file holds six)")
    g.add_argument("--fixed_width", action="store_true", help="pad every batch to --seq_len "
                   "(one shape: Jittor compiles its kernels once)")


def preference_problems(args, task) -> list:
    """Task-specific argument problems; fills derived values (data path, trained part)."""
    problems = lora_flag_problems(args)
    try:
        args.data = resolve_data_path(args.data, PREFERENCE_ENV, flag="--data",
                                      what="preference data (a JSON file)", check=file_check)
    except DataDirError as exc:
        problems.append(str(exc))
    if args.label_smooth:
        problems.append("--label_smooth applies to the language-model loss only")
    if task == "reward":
        args.trainable = args.trainable or ("lora" if args.lora_dim > 0 else "all")
        if args.trainable == "lora" and args.lora_dim <= 0:
            problems.append("--trainable lora needs --lora_dim > 0")
        if args.trainable != "lora" and args.lora_dim > 0:
            problems.append(f"--lora_dim {args.lora_dim} with --trainable {args.trainable}: "
                            f"LoRA trains with --trainable lora only")
        args.num_classes, args.class_weights = 1, None  # the classifier's head, one output
    return problems


def preference_datasets(args, tokenizer) -> dict:
    """{split: PreferenceDataset}; prints what was split, cut and dropped."""
    splits, dropped = split_preference_entries(
        args.data, args.split_seed, args.valid_fraction, args.test_fraction, args.limit,
        drop_equal=args.drop_equal_pairs)
    sizes = {"train": args.train_batch_size, "valid": args.valid_batch_size,
             "test": args.valid_batch_size}
    data = {name: PreferenceDataset(entries, tokenizer, sizes[name], args.seq_len,
                                    f"{name} split of {args.data}", args.fixed_width)
            for name, entries in splits.items()}
    print(f"preference data {args.data}: " + ", ".join(
        f"{name} {d.num_examples}" for name, d in data.items()) + " pairs"
        + (f" ({len(dropped)} entries with chosen == rejected left out: {dropped})"
           if dropped else ""), flush=True)
    report = data["test"].truncation_report()
    if report:
        print(f"warning: {report}", flush=True)
    return data


def score_pairs(backend, dataset) -> dict:
    """Loss and metrics of the backend's model on every pair of `dataset` (batch means weighted
    by the batch's pairs, so the result is the mean over pairs)."""
    losses, metrics, sizes = [], [], []
    for batch in dataset.eval_batches():
        losses.append(backend.eval_loss(batch))
        metrics.append(backend.take_metrics())
        sizes.append(batch["input"].shape[0] // 2)
    names = list(metrics[0])
    values = backend.fetch(losses + [m[name] for m in metrics for name in names])
    n = sum(sizes)
    out = {"pairs": n, "loss": sum(v * s for v, s in zip(values, sizes)) / n}
    rest = values[len(losses):]
    for k, name in enumerate(names):
        column = rest[k::len(names)]
        out[name] = sum(v * s for v, s in zip(column, sizes)) / n
    return out


def write_reward_card(args, summary) -> dict:
    """WORK_DIR/reward_model.json: the reward model's shape and final checkpoint in the layout
    of classify_ft.py's model card (one output, `reward`), so `backends.load_classifier` builds
    it for scoring responses (scripts/reward_judge.py)."""
    return write_model_card(args, summary, labels=("reward",), name=REWARD_CARD,
                            seq_len=args.seq_len)


def read_reward_card(model_dir) -> dict:
    """The card `write_reward_card` left in `model_dir`, its checkpoint made a path."""
    return read_model_card(model_dir, REWARD_CARD, "reward_ft.py", "--reward_model")


def train_and_score(args, task, backend_for):
    """Split and encode --data, train (`backend_for(args.backend)`: the task's backend class),
    score the final weights on the test split into WORK_DIR/reward_eval.json or dpo_eval.json;
    the run folder is locked meanwhile."""
    tokenizer = load_tokenizer(args.vocab)
    data = preference_datasets(args, tokenizer)  # bad data is refused before anything is written
    spec = TASKS[task]
    with RunLock(args.work_dir):
        trainer = Trainer(args, backend_for(args.backend), datasets=(data["train"], data["valid"]),
                          resume_keys=DATA_RESUME_KEYS + spec["resume_keys"])
        summary = trainer.train()
        scores = score_pairs(trainer.backend, data["test"])
        result = {"backend": args.backend, "checkpoint": summary["final_checkpoint"],
                  "steps": summary["steps"], "test": scores,
                  "valid": {k[len("valid_"):]: v for k, v in trainer.last_valid.items()
                            if k.startswith("valid_") and k != "valid_ppl"},
                  "data": {name: d.counts() for name, d in data.items()}}
        if task == "dpo":
            result["beta"] = args.beta
        else:
            result.update(margin=args.margin, trainable=args.trainable)
            write_reward_card(args, summary)
        write_json(os.path.join(args.work_dir, spec["eval_file"]), result)
    p = spec["prefix"]
    print(f"test: {scores['pairs']} pairs, loss {scores['loss']:.4f}, accuracy "
          f"{scores[p + 'accuracy']:.4f}, margin {scores[p + 'margin']:.4f} (chosen "
          f"{scores[p + 'chosen']:.4f}, rejected {scores[p + 'rejected']:.4f}) -> "
          f"{os.path.join(args.work_dir, spec['eval_file'])}", flush=True)
    return result


def run_preference_script(task, backend_for, argv=None):
    """scripts/reward_ft.py's and scripts/dpo_ft.py's main: parse, check the task's arguments
    and the trainer's (before the data is read; validate runs again in the trainer), train and
    score with `backend_for(args.backend)`."""
    parser = build_preference_parser(task)
    args = parser.parse_args(argv)
    problems = preference_problems(args, task)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))
    return run_training_script(parser, args, lambda: train_and_score(
        validate(args, data_files=False), task, backend_for))
