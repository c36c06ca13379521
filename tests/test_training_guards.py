"""Training faults that once gave silent wrong results or raw tracebacks (issue 11).

Resume across an accumulation window, sequence lengths past the position table, runs in which
no example keeps a completion token, a save that meets a full disk, a damaged trainer state,
and arguments that cannot run (a missing GPU, an unusable --work_dir).
"""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from shared.backends import training_backend as backend_class
from shared.trainer import TrainingError, train

from test_training import assert_same_result, make_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_resume_is_exact_when_save_interval_is_not_a_multiple_of_grad_acc(tmp_path, encoded,
                                                                          backend):
    """--grad_acc 2 --save_interval 5: the step-5 checkpoint would fall inside an accumulation
    window. A run that dies at step 9 and is resumed ends bit-identical to one that never
    stopped (so does one whose later checkpoints were deleted)."""
    extra = ["--save_interval", "5", "--max_step", "12"]
    train(make_args(encoded, tmp_path / "full", backend, extra), backend_class(backend))

    def crash(step):
        if step == 9:
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_args(encoded, tmp_path / "resumed", backend, extra), backend_class(backend),
              on_step=crash)
    train(make_args(encoded, tmp_path / "resumed", backend, extra + ["--resume"]),
          backend_class(backend))
    assert_same_result(tmp_path / "full", tmp_path / "resumed")
    saved = sorted(int(name.split(".")[1]) for name in os.listdir(tmp_path / "full")
                   if name.startswith("trainer_state."))
    assert all(step % 2 == 0 for step in saved), saved  # only at update boundaries
