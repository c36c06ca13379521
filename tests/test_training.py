"""Training loop behaviour: resume equals an uninterrupted run, failures are clear and early.

Also the reference optimizer and schedules against values worked out independently.
"""
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from backends import training_backend as backend_class
from shared.model.checkpoint import read_checkpoint
from shared.train.schedule import lr_at, multiplier
from shared.train.train_args import build_parser
from shared.train.trainer import TrainingError, TrainingInterrupted, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_args(encoded, work_dir, backend="torch", extra=()):
    argv = ["--backend", backend, "--device", "cpu",
            "--train_data", str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--lora_dim", "4", "--lora_alpha", "16",
            "--lora_dropout", "0.1", "--train_batch_size", "4", "--valid_batch_size", "8",
            "--seq_len", "64", "--max_step", "12", "--warmup_step", "2", "--lr", "0.01",
            "--grad_acc", "2", "--clip", "1.0", "--log_interval", "3", "--eval_interval", "6",
            "--save_interval", "4", "--max_eval_batches", "3", "--random_seed", "5",
            "--work_dir", str(work_dir), "--no_progress", *extra]
    return build_parser().parse_args(argv)


def log_lines(work_dir):
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def without_timing(records):
    drop = ("tokens_per_s", "elapsed_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def final_weights(work_dir, step=12):
    return read_checkpoint(os.path.join(work_dir, f"model.{step}.pt"))


def assert_same_result(dir_a, dir_b):
    assert without_timing(log_lines(dir_a)) == without_timing(log_lines(dir_b))
    wa, wb = final_weights(dir_a), final_weights(dir_b)
    assert sorted(wa) == sorted(wb)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_crash_then_resume_equals_uninterrupted(tmp_path, encoded, backend):
    """Dropout on (framework RNG), grad accumulation, clipping, warmup: a run that dies at step
    7 (last checkpoint at 4) and is resumed ends bit-identical to one that never stopped."""
    train(make_args(encoded, tmp_path / "full", backend), backend_class(backend))

    def crash(step):
        if step == 7:
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_args(encoded, tmp_path / "resumed", backend), backend_class(backend), on_step=crash)
    assert max(r["step"] for r in log_lines(tmp_path / "resumed")) >= 6  # it logged past the checkpoint
    train(make_args(encoded, tmp_path / "resumed", backend, ["--resume"]), backend_class(backend))
    assert_same_result(tmp_path / "full", tmp_path / "resumed")


def test_sigint_saves_at_the_next_update_and_resumes(tmp_path, encoded):
    train(make_args(encoded, tmp_path / "full"), backend_class("torch"))

    def interrupt(step):
        if step == 5:  # mid-accumulation (grad_acc 2): the stop waits for step 6
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="step 6"):
        train(make_args(encoded, tmp_path / "stopped"), backend_class("torch"), on_step=interrupt)
    assert os.path.isfile(tmp_path / "stopped" / "model.6.pt")
    train(make_args(encoded, tmp_path / "stopped", extra=["--resume"]), backend_class("torch"))
    assert_same_result(tmp_path / "full", tmp_path / "stopped")


def test_resume_across_backends(tmp_path, encoded):
    """The checkpoint is backend-neutral: a torch run can be finished by jittor."""
    def crash(step):
        if step == 5:
            raise RuntimeError("stop")
    extra = ["--lora_dropout", "0.0"]
    with pytest.raises(RuntimeError):
        train(make_args(encoded, tmp_path / "run", "torch", extra), backend_class("torch"), on_step=crash)
    summary = train(make_args(encoded, tmp_path / "run", "jittor", extra + ["--resume"]),
                    backend_class("jittor"))
    assert summary["steps"] == 12 and summary["backend"] == "jittor"
    train(make_args(encoded, tmp_path / "ref", "torch", extra), backend_class("torch"))
    ref, got = final_weights(tmp_path / "ref"), final_weights(tmp_path / "run")
    worst = max(float(np.abs(ref[k] - got[k]).max()) for k in ref if "lora_" in k)
    assert worst < 1e-5


def test_resume_refuses_changed_arguments_and_fresh_run_refuses_old_dir(tmp_path, encoded):
    train(make_args(encoded, tmp_path / "run", extra=["--max_step", "4"]), backend_class("torch"))
    with pytest.raises(TrainingError, match="--lr"):
        train(make_args(encoded, tmp_path / "run", extra=["--max_step", "4", "--lr", "0.1", "--resume"]),
              backend_class("torch"))
    with pytest.raises(TrainingError, match="--resume"):
        train(make_args(encoded, tmp_path / "run", extra=["--max_step", "4"]), backend_class("torch"))
    with pytest.raises(TrainingError, match="no complete checkpoint"):
        train(make_args(encoded, tmp_path / "empty", extra=["--resume"]), backend_class("torch"))


def test_non_finite_loss_stops_naming_the_step(tmp_path, encoded):
    from torch_impl.train import TorchBackend

    class PoisonedAtStep3(TorchBackend):
        def forward_backward(self, batch, loss_scale, label_smooth):
            loss = super().forward_backward(batch, loss_scale, label_smooth)
            return loss * float("nan") if self.current_step == 3 else loss

        def set_step(self, step):
            self.current_step = step
            super().set_step(step)

    with pytest.raises(TrainingError, match="loss is nan at step 3"):
        train(make_args(encoded, tmp_path / "nan", extra=["--max_step", "6"]), PoisonedAtStep3)
    # the checkpoint written before the failure (step 4 is never reached) does not exist
    assert not os.path.exists(tmp_path / "nan" / "model.4.pt")


@pytest.mark.parametrize("bad, message", [
    (["--model_card", "gpt2.xl"], "unknown --model_card"),
    (["--warmup_step", "50", "--max_step", "10"], "--warmup_step 50 > --max_step 10"),
    (["--train_data", "/nonexistent/train.jsonl"], "/nonexistent/train.jsonl: file not found"),
    (["--init_checkpoint", "/nonexistent/model.pt"], "file not found"),
    (["--n_embd", "30"], "not divisible by --n_head"),
    (["--precision", "bf16"], "needs --device cuda"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, encoded, bad, message):
    argv = ["--backend", "torch", "--device", "cpu", "--train_data", str(encoded / "train.jsonl"),
            "--valid_data", str(encoded / "valid.jsonl"), "--n_embd", "32", "--n_layer", "1",
            "--n_head", "4", "--max_step", "10", "--work_dir", str(tmp_path / "w"), *bad]
    proc = subprocess.run([sys.executable, "scripts/gpt2_ft.py", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not os.path.exists(tmp_path / "w")


# ------------------------------------------------------------------ optimizer and schedule
def reference_adamw(p, grads, lr, b1, b2, eps, wd, correct_bias):
    """microsoft/LoRA AdamW, transcribed in numpy."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * (math.sqrt(1 - b2 ** t) / (1 - b1 ** t) if correct_bias else 1.0)
        p = p - step * m / (np.sqrt(v) + eps)
        p = p - lr * wd * p
    return p


@pytest.mark.parametrize("correct_bias", [True, False])
def test_adamw_matches_the_reference_in_both_backends(correct_bias):
    import torch
    from jittor_impl.optim import AdamW as JAdamW
    from jittor_impl.runtime import jt
    from torch_impl.optim import AdamW as TAdamW
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(4)]
    hp = dict(lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, correct_bias=correct_bias)
    expected = reference_adamw(p0.astype(np.float64), grads, 0.1, 0.9, 0.98, 1e-6, 0.01, correct_bias)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    topt = TAdamW([tp], **hp)
    jp = jt.array(p0.copy())
    jopt = JAdamW([jp], **hp)
    for g in grads:
        tp.grad = torch.from_numpy(g)
        topt.step()
        jopt.backward((jp * jt.array(g)).sum())  # d/dp of sum(p * g) = g
        jopt.step()
    np.testing.assert_allclose(tp.detach().numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(jp.numpy(), expected, atol=1e-6)


def test_schedules_against_hand_values():
    # linear: warmup 10, total 110 -> ramps 0, .1, ..., then decays to 0 at step 110
    assert multiplier("linear", 0, 10, 110) == 0.0
    assert multiplier("linear", 5, 10, 110) == 0.5
    assert multiplier("linear", 10, 10, 110) == 1.0
    assert multiplier("linear", 60, 10, 110) == 0.5
    assert multiplier("linear", 110, 10, 110) == 0.0
    assert multiplier("linear", 200, 10, 110) == 0.0
    assert multiplier("constant", 3, 4, 100) == 0.75 and multiplier("constant", 90, 4, 100) == 1.0
    assert multiplier("cosine", 0, 0, 100) == 1.0
    assert abs(multiplier("cosine", 50, 0, 100) - 0.5) < 1e-12
    assert abs(multiplier("cosine", 100, 0, 100)) < 1e-12
    # the update after micro-batch 1 uses the multiplier of step 0 (the reference's LambdaLR)
    assert lr_at(2e-4, "linear", 1, 500, 1000) == 0.0
    assert lr_at(2e-4, "linear", 1, 0, 1000) == 2e-4
    with pytest.raises(ValueError, match="unknown scheduler"):
        multiplier("inv_sqrt", 1, 1, 10)


def test_microsoft_lora_e2e_command_line_parses_unchanged(tmp_path):
    """The flags of microsoft/LoRA's README command for GPT-2 M on E2E, plus --backend."""
    argv = ("--train_data ./data/e2e/train.jsonl --valid_data ./data/e2e/valid.jsonl "
            "--train_batch_size 8 --grad_acc 1 --valid_batch_size 4 --seq_len 512 "
            "--model_card gpt2.md --init_checkpoint ./pretrained_checkpoints/gpt2-medium-pytorch_model.bin "
            "--platform local --clip 0.0 --lr 0.0002 --weight_decay 0.01 --correct_bias "
            "--adam_beta2 0.999 --scheduler linear --warmup_step 500 --max_epoch 5 "
            "--save_interval 1000 --lora_dim 4 --lora_alpha 32 --lora_dropout 0.1 "
            "--label_smooth 0.1 --work_dir ./trained_models/GPT2_M/e2e --random_seed 110 "
            "--local_rank=0 --backend jittor").split()
    args = build_parser().parse_args(argv)
    assert (args.model_card, args.lora_dim, args.lora_alpha, args.lr, args.adam_beta2) == \
        ("gpt2.md", 4, 32, 0.0002, 0.999)
    assert args.correct_bias and args.max_epoch == 5 and args.adam_epislon == 1e-6
