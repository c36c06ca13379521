"""Pretraining alignment: windows of a token stream give the same losses, gradients, training
run and samples in both backends.

Tiny model on CPU (n_embd 64, 2 layers, GPT-2's vocabulary). The batch format is
shared/text/text_data.py's (every position carries loss); training is `scripts/pretrain.py` itself,
full training from the same seeded init, 8 steps. Tolerances (fp32, CPU) as the E2E suite's:
loss 1e-5 relative, gradients 1e-4 of each tensor's scale, final weights 1e-5 absolute after 8
Adam steps; the periodic samples (seeded numpy sampler, temperature 0.8, top-k 20) must be the
same text.
"""
import json
import os

import numpy as np

from alignment.harness import (build_pair, compare, jittor_forward, jittor_grads, jittor_on,
                               tiny_config, torch_forward, torch_grads)
from alignment.task_fixtures import assert_task_runs_agree, write_text_file
from shared.model.checkpoint import read_checkpoint
from shared.text.text_data import WindowDataset

LOSS_RTOL, GRAD_SCALE_TOL, WEIGHT_ATOL = 1e-5, 1e-4, 1e-5


def window_batch():
    tokens = np.random.default_rng(3).integers(0, 50257, size=200)
    dataset = WindowDataset(tokens, seq_len=16, stride=12, batch_size=3)
    return next(dataset.train_batches(epoch=1, seed=5))


def test_window_forward_loss_and_gradients():
    config = tiny_config()
    batch = window_batch()
    with jittor_on("cpu"):
        t_model, j_model, state = build_pair(config, seed=2)
        t_logits, t_loss = torch_forward(t_model, batch["input"], labels=batch["target"],
                                         mask=batch["mask"])
        j_logits, j_loss = jittor_forward(j_model, batch["input"], labels=batch["target"],
                                          mask=batch["mask"])
        compare("pretrain/logits", j_logits, t_logits, 1e-4, 1e-4)
        compare("pretrain/loss", j_loss.reshape(()), t_loss.reshape(()), 1e-5, LOSS_RTOL)
        t_model.train()
        j_model.train()
        _, t_grads = torch_grads(t_model, batch["input"], batch["target"], batch["mask"])
        _, j_grads = jittor_grads(j_model, batch["input"], batch["target"], batch["mask"])
    assert sorted(t_grads) == sorted(j_grads) == sorted(state)
    for name in state:
        scale = float(np.abs(t_grads[name]).max())
        assert scale > 0, f"no gradient reached {name}"
        compare(f"pretrain/grad/{name}", j_grads[name], t_grads[name],
                GRAD_SCALE_TOL * scale, 1e-3)


def run_pretrain(vocab_dir, text, work_dir, backend):
    from scripts.pretrain import main
    argv = ["--backend", backend, "--device", "cpu", "--text", str(text), "--n_embd", "64",
            "--n_layer", "2", "--n_head", "4", "--seq_len", "32", "--stride", "24",
            "--valid_fraction", "0.15", "--train_batch_size", "4", "--valid_batch_size", "4",
            "--max_step", "8", "--warmup_step", "2", "--lr", "0.003", "--weight_decay", "0.1",
            "--correct_bias", "--clip", "1.0", "--log_interval", "4", "--eval_interval", "4",
            "--save_interval", "4", "--sample_every", "4", "--temperature", "0.8", "--top_k",
            "20", "--sample_tokens", "12", "--random_seed", "7", "--attn", "math",
            "--no_progress", "--work_dir", str(work_dir), "--vocab", vocab_dir]
    assert main(argv) == 0
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(work_dir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    weights = read_checkpoint(os.path.join(work_dir, "model.8.pt"))
    return records, samples, weights


def test_pretrain_training_run_and_samples(tmp_path, vocab_dir):
    text = write_text_file(tmp_path / "story.txt")
    t_records, t_samples, t_weights = run_pretrain(vocab_dir, text, tmp_path / "torch", "torch")
    j_records, j_samples, j_weights = run_pretrain(vocab_dir, text, tmp_path / "jittor", "jittor")
    assert_task_runs_agree("pretrain", (t_records, t_weights), (j_records, j_weights), 8,
                           LOSS_RTOL, WEIGHT_ATOL)
    assert [s["step"] for s in t_samples] == [4, 8]  # the final sample replaces step 8's
    assert [s["text"] for s in t_samples] == [s["text"] for s in j_samples]
    assert all(len(s["tokens"]) > 0 for s in t_samples)
