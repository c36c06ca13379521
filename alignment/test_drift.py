"""Drift attribution (alignment.drift): the twins trained side by side on the same batches, free
running and teacher-forced (torch's weights and AdamW moments copied into Jittor after every
step), and the optimizer-state adapters."""
import numpy as np
import pytest

from alignment.drift import (backend_args, load_optimizer_moments, optimizer_lrs,
                             optimizer_moments, run_drift)
from alignment.test_planted_bugs import tiny_train_config, train_batches
from backends import training_backend

STEPS = 4
LRS = [1e-3, 2e-3, 3e-3, 2e-3]  # a warmup and a decay, as the schedule would hand them


@pytest.fixture(scope="module")
def reports():
    config = tiny_train_config()
    batches = train_batches(STEPS, seed=5)
    return {mode: run_drift(config, batches, LRS, mode=mode, clip=1.0) for mode in ("free", "teacher")}


def test_no_divergence_and_same_learning_rates(reports):
    for report in reports.values():
        assert report.first_divergence() is None
        assert [s["lr"][0] for s in report.steps] == [s["lr"][1] for s in report.steps] == [[lr] for lr in LRS]
        losses = np.array([s["loss"] for s in report.steps])
        assert np.abs(losses[:, 0] - losses[:, 1]).max() < 1e-5 * np.abs(losses[:, 0]).max()


def test_teacher_forcing_separates_step_error_from_drift(reports):
    free = reports["free"].worst_by_step("param")
    teacher = reports["teacher"].worst_by_step("param")
    print(f"\nworst LoRA weight rel L2 per step: free {['%.1e' % x for x in free]}, "
          f"teacher-forced {['%.1e' % x for x in teacher]}")
    assert teacher[0] == free[0]  # the first step starts from equal states in both modes
    assert max(teacher) < 1e-5  # every single step agrees to fp32 rounding


def test_optimizer_state_adapters_round_trip():
    config = tiny_train_config()
    args = backend_args()
    tb, jb = (training_backend(b)(config, args) for b in ("torch", "jittor"))
    batch = train_batches(1)[0]
    tb.set_step(1)
    tb.forward_backward(batch, 1.0, 0.0)
    tb.update(1e-3, 0.0)
    moments = optimizer_moments(tb)
    assert moments and all(m["step"] == 1 for m in moments.values())
    load_optimizer_moments(jb, moments)
    back = optimizer_moments(jb)
    for name, m in moments.items():
        np.testing.assert_array_equal(back[name]["exp_avg"], m["exp_avg"])
        np.testing.assert_array_equal(back[name]["exp_avg_sq"], m["exp_avg_sq"])
        assert back[name]["step"] == 1
    assert optimizer_lrs(tb) == optimizer_lrs(jb) == [1e-3]
