"""Training alignment: the same run in both backends gives the same loss curve and weights.

Tiny model on CPU (n_embd 32, 2 layers), LoRA r=4 on top of a seeded base, 16 steps of the real
training loop (shared/train/trainer.py) on encoded e2e-offline data. Tolerances (fp32, CPU): per-step
training loss relative difference <= 1e-5, final LoRA weights max abs difference <= 1e-5.
"""
import json
import os

import numpy as np
import pytest

from shared.model.checkpoint import read_checkpoint
from backends import training_backend as backend_class
from shared.train.train_args import build_parser
from shared.train.trainer import train

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def run(encoded, work_dir, backend, device="cpu", extra=()):
    argv = ["--backend", backend, "--device", device,
            "--train_data", str(encoded / "train.jsonl"), "--valid_data", str(encoded / "valid.jsonl"),
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--lora_dim", "4", "--lora_alpha", "16",
            "--train_batch_size", "4", "--valid_batch_size", "8", "--seq_len", "64",
            "--max_step", "16", "--warmup_step", "4", "--lr", "0.01", "--weight_decay", "0.01",
            "--correct_bias", "--clip", "1.0", "--log_interval", "4", "--eval_interval", "8",
            "--save_interval", "8", "--max_eval_batches", "4", "--random_seed", "3",
            "--work_dir", str(work_dir), "--no_progress", "--attn", "math", *extra]
    args = build_parser().parse_args(argv)
    summary = train(args, backend_class(backend))
    return summary, read_log(work_dir)


def read_log(work_dir):
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return ([r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "valid"])


def lora_weights(path):
    return {k: v for k, v in read_checkpoint(path).items() if "lora_" in k}


def assert_same_run(tmp_path, a, b, report=None):
    (train_a, valid_a), (train_b, valid_b) = a[1], b[1]
    assert [r["step"] for r in train_a] == [r["step"] for r in train_b] == list(range(1, 17))
    loss_a = np.array([r["loss"] for r in train_a])
    loss_b = np.array([r["loss"] for r in train_b])
    rel = np.abs(loss_a - loss_b) / np.abs(loss_a)
    assert rel.max() <= LOSS_RTOL, f"loss curves differ: max rel {rel.max():.3g}"
    assert [r["lr"] for r in train_a] == [r["lr"] for r in train_b]
    norms = np.array([[r["grad_norm"], s["grad_norm"]] for r, s in zip(train_a, train_b)])
    np.testing.assert_allclose(norms[:, 0], norms[:, 1], rtol=1e-4)
    np.testing.assert_allclose([v["valid_loss"] for v in valid_a], [v["valid_loss"] for v in valid_b],
                               rtol=LOSS_RTOL)
    wa, wb = lora_weights(a[0]["final_checkpoint"]), lora_weights(b[0]["final_checkpoint"])
    assert sorted(wa) == sorted(wb) and len(wa) == 4
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= WEIGHT_ATOL, f"final LoRA weights differ by {worst:.3g}"
    assert loss_a[-4:].mean() < loss_a[:4].mean()  # it learned something
    return rel.max(), worst


@pytest.mark.parametrize("device", DEVICES)
def test_torch_and_jittor_training_runs_agree(tmp_path, encoded, device):
    a = run(encoded, tmp_path / "torch", "torch", device)
    b = run(encoded, tmp_path / "jittor", "jittor", device)
    rel, worst = assert_same_run(tmp_path, a, b)
    print(f"training alignment ({device}): max rel loss diff {rel:.3g}, max abs LoRA diff {worst:.3g}")


def test_shared_dropout_makes_dropout_runs_match(tmp_path, encoded):
    extra = ("--lora_dropout", "0.1", "--shared_dropout")
    a = run(encoded, tmp_path / "torch", "torch", extra=extra)
    b = run(encoded, tmp_path / "jittor", "jittor", extra=extra)
    assert_same_run(tmp_path, a, b)
    # and dropout is really on: the curve differs from the dropout-free one
    c = run(encoded, tmp_path / "torch_nodrop", "torch")
    assert [r["loss"] for r in a[1][0]][1:] != [r["loss"] for r in c[1][0]][1:]
