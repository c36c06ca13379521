"""How the training scripts end (shared/train/training_script.py): each known failure of the work is
one line on stderr and its exit status; a stop signal outside the training loop ends it too."""
import argparse
import errno
import os
import signal

import pytest

from shared.model.checkpoint import CheckpointError
from shared.runtime.run_lock import RunFolderBusy
from shared.runtime.arg_types import ArgumentProblem
from shared.train.trainer import TrainingError, TrainingInterrupted
from shared.train.training_script import DISK_HINT, run_training_script


def run(exc, **kwargs):
    def work():
        raise exc
    parser = argparse.ArgumentParser(prog="train.py")
    return run_training_script(parser, argparse.Namespace(work_dir="runs/x"), work, **kwargs)


def test_a_finished_run_is_status_0():
    parser = argparse.ArgumentParser(prog="train.py")
    done = []
    assert run_training_script(parser, argparse.Namespace(work_dir="w"), lambda: done.append(1)) == 0
    assert done == [1]


@pytest.mark.parametrize("exc", [TrainingError("loss is nan at step 3"),
                                 CheckpointError("model.pt: not a checkpoint"),
                                 RunFolderBusy("runs/x is in use"),
                                 FileNotFoundError("data.jsonl not found"),
                                 ValueError("bad line 4")])
def test_bad_input_and_failed_runs_are_one_error_line(exc, capsys):
    assert run(exc) == 2
    assert capsys.readouterr().err == f"error: {exc}\n"


def test_other_os_errors_say_how_to_go_on_where_asked(capsys):
    full = OSError(errno.ENOSPC, "No space left on device")
    assert run(full) == 2
    assert capsys.readouterr().err == f"error: {full}; {DISK_HINT}\n"
    assert run(full, disk_hint=False) == 2
    assert capsys.readouterr().err == f"error: {full}\n"


def test_an_argument_problem_is_the_parsers_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        run(ArgumentProblem("bad arguments:\n  --lr must be positive, got 0"))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: train.py") and "--lr must be positive" in err


def test_a_saved_stop_gives_128_plus_the_signal(capsys):
    assert run(TrainingInterrupted("stopped at step 4", signal.SIGTERM)) == 128 + signal.SIGTERM
    assert capsys.readouterr().err == "stopped at step 4\n"


def test_a_signal_outside_the_training_loop_stops_the_work(capsys):
    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the work")
    parser = argparse.ArgumentParser(prog="train.py")
    assert run_training_script(parser, argparse.Namespace(work_dir="runs/x"), work) == \
        128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.startswith("stopped by SIGTERM outside the training loop; the checkpoints already "
                          "in runs/x are whole")
