"""How a training script (gpt2_ft.py, instruct_ft.py, classify_ft.py, pretrain.py) ends.

`run_training_script` runs the script's work under `raise_on_stop_signals` and turns the failures
it knows into one-line errors and exit statuses, written once for all four scripts: an argument
problem is the parser's usage error (status 2); bad data, a bad checkpoint, a busy run folder or a
failed run is `error: ...` (status 2); a stop signal is 128 + its number, after the trainer saved
(`TrainingInterrupted`) or outside the training loop (`StopSignal`), whose checkpoints are whole.
"""
from __future__ import annotations

import sys

from .checkpoint import CheckpointError
from .run_lock import RunFolderBusy
from .stop_signals import StopSignal, exit_status, raise_on_stop_signals
from .tokenizer import VocabError
from .train_args import ArgumentProblem
from .trainer import TrainingError, TrainingInterrupted

DISK_HINT = "free space or fix permissions, then rerun with --resume"


def run_training_script(parser, args, work, disk_hint=True) -> int:
    """`work()` with its known failures turned into the exit status the script returns (0 when it
    finishes). `disk_hint`: an OSError other than a missing file (e.g. the work dir filled up or
    became unwritable mid-run) also says how to go on."""
    try:
        with raise_on_stop_signals():  # the training loop's own handler saves first
            work()
    except ArgumentProblem as exc:
        parser.error(str(exc))
    except (TrainingError, CheckpointError, VocabError, RunFolderBusy, FileNotFoundError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}; {DISK_HINT}" if disk_hint else f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exit_status(exc.signum)
    except StopSignal as exc:
        print(f"{exc} outside the training loop; the checkpoints already in {args.work_dir} are "
              f"whole: rerun the same command (with --resume if it holds any)", file=sys.stderr)
        return exc.exit_code
    return 0
