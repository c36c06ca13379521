"""Classification alignment: GPT-2 + head on the last real token gives the same logits, losses,
gradients, training run and test metrics in both backends.

Tiny model on CPU (n_embd 64, 2 layers). Checked: the head reads position `length - 1` (padding
after it changes nothing), the class-weighted loss, gradients of each `--trainable` part (and no
gradient outside it), and `scripts/classify_ft.py` itself for 8 steps with LoRA dropout 0.1 drawn
from the shared backend-neutral masks (--shared_dropout), so the runs must match step for step.
Tolerances (fp32, CPU): logits 1e-5, loss 1e-5 relative, gradients 1e-4 of each tensor's scale,
final weights 1e-5 absolute; the test-split predictions (metrics.json) must be identical.
"""
import json
import os

import numpy as np
import pytest
import torch

from alignment.harness import compare, jittor_on, tiny_config
from alignment.task_fixtures import assert_task_runs_agree, write_spam_file
from shared.model.checkpoint import read_checkpoint
from shared.model.classifier_params import init_head, is_trainable
from alignment.harness import randomize_lora_B
from shared.model.params import init_state_dict

LOSS_RTOL, GRAD_SCALE_TOL, WEIGHT_ATOL = 1e-5, 1e-4, 1e-5
WEIGHTS = [0.625, 2.5]


def padded_batch():
    rng = np.random.default_rng(11)
    lengths = np.array([9, 4, 6])
    ids = np.full((3, 9), 50256, dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(0, 50257, size=n)
    return ids, lengths, np.array([1, 0, 1])


def build_classifiers(config, class_weights=None, trainable="all"):
    from jittor_impl.classifier import GPT2Classifier as JittorClassifier
    from jittor_impl.lora import mark_trainable as jittor_mark
    from torch_impl.classifier import GPT2Classifier as TorchClassifier
    from torch_impl.lora import mark_trainable as torch_mark
    body = init_state_dict(config, 4)
    if config.lora_attn_dim:
        body = randomize_lora_B(body, 4)  # non-zero, so the LoRA path reaches the output
    state = {**body, **init_head(config, 2, 4)}
    models = []
    for cls, mark in ((TorchClassifier, torch_mark), (JittorClassifier, jittor_mark)):
        model = cls(config, 2, class_weights=class_weights)
        model.load_state_numpy(state)
        model.set_attention("math")
        mark(model, lambda n: is_trainable(n, trainable, config.n_layer))
        models.append(model)
    return models[0], models[1], state


@pytest.mark.parametrize("class_weights", [None, WEIGHTS], ids=["unweighted", "weighted"])
def test_logits_loss_and_padding(class_weights):
    from jittor_impl.runtime import jt
    ids, lengths, labels = padded_batch()
    with jittor_on("cpu"):
        t_model, j_model, _ = build_classifiers(tiny_config(), class_weights)
        t_model.eval()
        j_model.eval()
        with torch.no_grad():
            t_logits, t_loss = t_model(*(torch.from_numpy(a) for a in (ids, lengths, labels)))
        with jt.no_grad():
            j_logits, j_loss = j_model(*(jt.array(a) for a in (ids, lengths, labels)))
            other_pad = ids.copy()
            other_pad[ids == 50256] = 7  # whatever follows the last real token is never read
            j_repadded = j_model(jt.array(other_pad), jt.array(lengths))
        compare("classify/logits", j_logits.numpy(), t_logits.numpy(), 1e-5, 1e-5)
        compare("classify/loss", j_loss.numpy().reshape(()), t_loss.numpy(), 1e-6, LOSS_RTOL)
        compare("classify/padding_invariance", j_repadded.numpy(), j_logits.numpy(), 1e-6, 1e-6)
    logp = t_logits.numpy() - np.log(np.exp(t_logits.numpy()).sum(-1, keepdims=True))
    w = np.ones(3) if class_weights is None else np.asarray(class_weights)[labels]
    expected = -(w * logp[np.arange(3), labels]).sum() / w.sum()
    assert abs(float(t_loss) - expected) < 1e-5


@pytest.mark.parametrize("trainable,lora_dim", [("last", 0), ("all", 0), ("lora", 4)])
def test_gradients_of_each_trainable_part(trainable, lora_dim):
    from jittor_impl.runtime import jt
    ids, lengths, labels = padded_batch()
    config = tiny_config(lora_dim)
    with jittor_on("cpu"):
        t_model, j_model, state = build_classifiers(config, WEIGHTS, trainable)
        t_model.train()
        j_model.train()
        _, t_loss = t_model(*(torch.from_numpy(a) for a in (ids, lengths, labels)))
        t_loss.backward()
        t_grads = {n: p.grad for n, p in t_model.named_parameters()}
        params = dict(j_model.named_parameters())
        names = [n for n, p in params.items() if p.requires_grad]
        _, j_loss = j_model(*(jt.array(a) for a in (ids, lengths, labels)))
        j_grads = dict(zip(names, (g.numpy() for g in jt.grad(j_loss, [params[n] for n in names]))))
    expected = sorted(n for n in state if is_trainable(n, trainable, config.n_layer))
    assert sorted(names) == expected
    assert sorted(n for n, g in t_grads.items() if g is not None) == expected
    for name in expected:
        scale = float(t_grads[name].abs().max())
        assert scale > 0, f"no gradient reached {name}"
        compare(f"classify/grad/{trainable}/{name}", j_grads[name], t_grads[name].numpy(),
                GRAD_SCALE_TOL * scale, 1e-3)


def run_classify(vocab_dir, data, work_dir, backend):
    from scripts.classify_ft import main
    argv = ["--backend", backend, "--device", "cpu", "--data", str(data), "--n_embd", "64",
            "--n_layer", "2", "--n_head", "4", "--trainable", "lora", "--lora_dim", "4",
            "--lora_alpha", "16", "--lora_dropout", "0.1", "--shared_dropout",
            "--balance", "class_weights", "--max_len", "16", "--train_batch_size", "4",
            "--valid_batch_size", "8", "--max_step", "8", "--warmup_step", "2", "--lr", "0.01",
            "--weight_decay", "0.01", "--correct_bias", "--clip", "1.0", "--log_interval", "4",
            "--eval_interval", "4", "--save_interval", "4", "--random_seed", "5", "--attn",
            "math", "--no_progress", "--work_dir", str(work_dir), "--vocab", vocab_dir]
    assert main(argv) == 0
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(work_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return records, metrics, read_checkpoint(os.path.join(work_dir, "model.8.pt"))


def test_classify_training_run_with_shared_dropout(tmp_path, vocab_dir):
    data = write_spam_file(tmp_path / "spam.tsv")
    t_records, t_metrics, t_weights = run_classify(vocab_dir, data, tmp_path / "torch", "torch")
    j_records, j_metrics, j_weights = run_classify(vocab_dir, data, tmp_path / "jittor", "jittor")
    assert_task_runs_agree("classify", (t_records, t_weights), (j_records, j_weights), 8,
                           LOSS_RTOL, WEIGHT_ATOL)
    for split in ("valid", "test"):
        assert t_metrics[split]["confusion_matrix"] == j_metrics[split]["confusion_matrix"]
