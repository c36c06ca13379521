"""The flags every `bash work.sh --task …` takes, defined once for every task's parser.

scripts/run_pipeline.py (E2E), task_pipelines.py (pretrain, classify), instruct_pipeline.py,
peft_pipeline.py and preference_pipeline.py (dpo, rlhf) each build their parser with `run_parser`
and add only their own flags (data, task switches): the preset, the run and report folders, the
vocabulary, the backends, the stage controls (--force, --force_stage, --until), the starting
weights, the seed, the dropout masks, and one override flag per setting of the task's presets
(listed apart in --help); the E2E data flags and the split seed for the tasks that take them.
"""
from __future__ import annotations

import argparse
import os

from shared.model.classifier_params import TRAINABLE_PARTS
from shared.runtime.arg_types import seed_int
from shared.runtime.paths import REPO_ROOT
from shared.pipeline.engine import PRESETS, setting_types
from shared.train.train_args import BACKENDS, PRECISIONS

# The settings whose override flag takes one of a few values (the stage scripts' choices).
SETTING_CHOICES = {"device": ("cpu", "cuda"), "precision": PRECISIONS,
                   "trainable": TRAINABLE_PARTS, "reward_trainable": TRAINABLE_PARTS}


def backend_list(text):
    """--backends: torch and/or jittor, comma-separated (checked before any folder is made)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or set(names) - set(BACKENDS):
        raise argparse.ArgumentTypeError(f"must name torch and/or jittor, got {text!r}")
    return text


def run_parser(pipeline, description, init_help, prog="work.sh", exact_dropout=False,
               e2e_data=False, split_seed=False):
    """An ArgumentParser with the common flags of `pipeline`'s task (a Pipeline class: its task
    names its PRESETS, its stages are the choices of --force_stage and --until, its run_name the
    default run folder's name); `init_help`: what --init_checkpoint does for this task;
    `exact_dropout`: the default of the shared dropout masks; `e2e_data`: the E2E tasks' --data_dir
    and --no_meteor; `split_seed`: the seeded split of an instruction or preference file."""
    task, stages = pipeline.task, pipeline.stages
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS[task]), default=None,
                   help=f"defaults to use: {pipeline.gpu_preset} when a GPU is present, else cpu; "
                        "micro is a seconds-long smoke run")
    p.add_argument("--run", default=None,
                   help=f"run name (default: {pipeline.run_name.format(preset='<preset>')})")
    p.add_argument("--runs_dir", default=os.path.join(REPO_ROOT, "runs"))
    p.add_argument("--logs_dir", default=None,
                   help="write the report and plots to LOGS_DIR/<run> (default: the run folder, "
                        "so a plain run never replaces the committed results under logs/)")
    if e2e_data:
        p.add_argument("--data_dir", default=None,
                       help="E2E .txt folder (else E2E_DATA_DIR, data/e2e)")
    p.add_argument("--vocab_dir", default=None, help="GPT-2 vocab (else GPT2_VOCAB_DIR)")
    p.add_argument("--backends", type=backend_list, default="torch,jittor",
                   help="comma-separated")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--force_stage", action="append", default=[], choices=stages,
                   help="rerun this stage and the ones after it")
    p.add_argument("--until", default=None, choices=stages,
                   help="stop after this stage (e.g. generate on a GPU machine, score elsewhere: "
                        "the same command resumes)")
    p.add_argument("--init_checkpoint", default=None, help=init_help)
    p.add_argument("--random_seed", type=seed_int, default=10)
    if split_seed:
        p.add_argument("--split_seed", type=seed_int, default=123,
                       help="the seed of the train / valid / test split")
    dropout = p.add_mutually_exclusive_group()
    dropout.add_argument("--exact_dropout", action="store_true", default=exact_dropout,
                         help="draw LoRA dropout masks from one backend-neutral generator, so the "
                              "two runs match step for step" + (" (the default)" if exact_dropout
                                                                else ""))
    dropout.add_argument("--framework_dropout", dest="exact_dropout", action="store_false",
                         help="each framework draws its own masks: the runs drift apart like two "
                              "seeds")
    if e2e_data:
        p.add_argument("--no_meteor", action="store_true", help="skip METEOR (needs Java)")
    settings = p.add_argument_group(
        "settings", f"one flag per setting of the {task} presets (typed and range-checked from "
                    "their values); a flag given replaces the preset's value")
    for key, kind in setting_types(task).items():
        settings.add_argument(f"--{key}", type=kind, default=None, choices=SETTING_CHOICES.get(key),
                              help="override the preset's value")
    return p
