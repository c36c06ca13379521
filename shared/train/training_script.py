"""How a training script (gpt2_ft.py, instruct_ft.py, classify_ft.py, pretrain.py) ends.

`run_training_script` is shared/runtime/entry_point.py's `run_script`, which every script uses, with the
training scripts' own cases: an argument problem is the parser's usage error (status 2); bad
data, a bad checkpoint, a busy run folder or a failed run is `error: ...` (status 2); a stop
signal is 128 + its number, after the trainer saved (`TrainingInterrupted`) or outside the
training loop (`StopSignal`), whose checkpoints are whole.
"""
from __future__ import annotations

from shared.runtime.entry_point import run_script
from shared.runtime.run_lock import RunFolderBusy
from shared.train.trainer import TrainingError, TrainingInterrupted

DISK_HINT = "free space or fix permissions, then rerun with --resume"


def run_training_script(parser, args, work, disk_hint=True) -> int:
    """`work()` with its known failures turned into the exit status the script returns (0 when it
    finishes). `disk_hint`: an OSError other than a missing file (e.g. the work dir filled up or
    became unwritable mid-run) also says how to go on."""
    def outside_the_loop(exc):
        return (f"{exc} outside the training loop; the checkpoints already in {args.work_dir} "
                f"are whole: rerun the same command (with --resume if it holds any)")

    def body():
        work()

    return run_script(body, parser, errors=(TrainingError, RunFolderBusy),
                      disk_hint=DISK_HINT if disk_hint else None, on_stop=outside_the_loop,
                      interrupted=(TrainingInterrupted,))
