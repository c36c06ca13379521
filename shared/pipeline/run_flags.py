"""The flags every `bash work.sh --task …` takes, defined once for the three task parsers.

scripts/run_pipeline.py (E2E), task_pipelines.py (pretrain, classify) and instruct_pipeline.py each
build their parser with `run_parser` and add only their own flags (data, dropout, task switches):
the preset, the run and report folders, the vocabulary, the backends, the stage controls (--force,
--force_stage, --until), the starting weights, the seed, and one override flag per setting of the
task's presets (listed apart in --help).
"""
from __future__ import annotations

import argparse
import os

from shared.runtime.arg_types import seed_int
from shared.runtime.paths import REPO_ROOT
from shared.pipeline.engine import PRESETS, setting_types


def run_parser(task, stages, run_name, description, init_help, prog="work.sh"):
    """An ArgumentParser with the common flags of work.sh's `task` (its PRESETS key): `stages`
    are the choices of --force_stage and --until, `run_name` the default run folder's name
    ({preset} filled in), `init_help` what --init_checkpoint does for this task."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS[task]), default=None,
                   help="defaults to use: cuda when a GPU is present, else cpu; micro is a "
                        "seconds-long smoke run")
    p.add_argument("--run", default=None,
                   help=f"run name (default: {run_name.format(preset='<preset>')})")
    p.add_argument("--runs_dir", default=os.path.join(REPO_ROOT, "runs"))
    p.add_argument("--logs_dir", default=None,
                   help="write the report and plots to LOGS_DIR/<run> (default: the run folder, "
                        "so a plain run never replaces the committed results under logs/)")
    p.add_argument("--vocab_dir", default=None, help="GPT-2 vocab (else GPT2_VOCAB_DIR)")
    p.add_argument("--backends", default="torch,jittor", help="comma-separated")
    p.add_argument("--force", action="store_true", help="rerun every stage")
    p.add_argument("--force_stage", action="append", default=[], choices=stages,
                   help="rerun this stage and the ones after it")
    p.add_argument("--until", default=None, choices=stages,
                   help="stop after this stage (e.g. generate on a GPU machine, score elsewhere: "
                        "the same command resumes)")
    p.add_argument("--init_checkpoint", default=None, help=init_help)
    p.add_argument("--random_seed", type=seed_int, default=10)
    settings = p.add_argument_group(
        "settings", f"one flag per setting of the {task} presets (typed and range-checked from "
                    "their values); a flag given replaces the preset's value")
    for key, kind in setting_types(task).items():
        settings.add_argument(f"--{key}", type=kind, default=None,
                              help="override the preset's value")
    return p
