"""Preference tuning, both backends: the reward model's pairwise loss and DPO's loss on the same
batch (values and gradients), DPO's ln 2 at the first step, and `scripts/reward_ft.py` and
`scripts/dpo_ft.py` run side by side (LoRA dropout from the shared masks) to the same logged
losses, metrics, held-out scores and weights.

Data: the first entries of instruction-data-with-preference.json (PREFERENCE_DATA, else
../shared/data/instruct), batched by shared/text/preference_data.py (chosen rows, then rejected).
Tolerances (fp32, CPU): losses 1e-5 relative, gradients 1e-4 of each tensor's scale, weights
1e-5 absolute.
"""
import json
import math
import os

import numpy as np
import pytest
import torch

from alignment.harness import build_jittor, build_torch, compare, jittor_on, seeded_state, tiny_config
from alignment.task_fixtures import assert_task_runs_agree
from shared.model.checkpoint import read_checkpoint
from shared.model.classifier_params import init_head
from shared.text.preference_data import PreferenceDataset, read_preference_entries
from shared.text.tokenizer import load_tokenizer

LOSS_RTOL, GRAD_SCALE_TOL, GRAD_RTOL, WEIGHT_ATOL = 1e-5, 1e-4, 1e-3, 1e-5
SEQ_LEN = 128


@pytest.fixture(scope="module")
def batch(preference_data, vocab_dir):
    entries = read_preference_entries(preference_data)[:3]  # entry 0 has an input
    data = PreferenceDataset(entries, load_tokenizer(vocab_dir), 3, SEQ_LEN)
    return data.collate([0, 1, 2])


def config(lora_dim=4):
    return tiny_config(lora_dim=lora_dim, n_positions=256, n_ctx=256)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def compare_grads(tag, t_grads, j_grads, zero=()):
    """Gradients equal within tolerance; each non-zero but those of `zero` (zero in both, up to
    rounding: below 1e-7)."""
    assert sorted(t_grads) == sorted(j_grads) and t_grads
    for name, grad in t_grads.items():
        scale = float(np.abs(grad).max())
        if name in zero:
            assert scale < 1e-7 and np.abs(j_grads[name]).max() < 1e-7, name
            continue
        assert scale > 0, f"no gradient reached {name}"
        compare(f"{tag}/grad/{name}", j_grads[name], grad, GRAD_SCALE_TOL * scale, GRAD_RTOL)


@pytest.mark.parametrize("margin", [0.0, 0.5], ids=["no-margin", "margin"])
def test_reward_loss_and_gradients(batch, margin):
    from jittor_impl.classifier import GPT2Classifier as JittorRM
    from jittor_impl.preference import reward_loss as jittor_reward_loss
    from jittor_impl.runtime import jt
    from torch_impl.classifier import GPT2Classifier as TorchRM
    from torch_impl.preference import reward_loss as torch_reward_loss
    cfg = config(lora_dim=0)
    state = {**seeded_state(cfg, seed=5), **init_head(cfg, 1, 5)}
    t_model = TorchRM(cfg, 1)
    t_model.load_state_numpy(state)
    t_model.set_attention("math")
    t_rewards = t_model(*(torch.from_numpy(batch[k]) for k in ("input", "length"))).reshape(-1)
    t_loss, t_metrics = torch_reward_loss(t_rewards, margin)
    t_loss.backward()
    t_grads = {n: p.grad.numpy() for n, p in t_model.named_parameters()}
    with jittor_on("cpu"):
        j_model = JittorRM(cfg, 1)
        j_model.load_state_numpy(state)
        j_model.set_attention("math")
        j_rewards = j_model(*(jt.array(batch[k]) for k in ("input", "length"))).reshape(-1)
        j_loss, j_metrics = jittor_reward_loss(j_rewards, margin)
        params = dict(j_model.named_parameters())
        j_grads = dict(zip(params, (g.numpy() for g in jt.grad(j_loss, list(params.values())))))
        j_values = {k: float(v.numpy()) for k, v in j_metrics.items()}
    compare("reward/rewards", j_rewards.numpy(), t_rewards.detach().numpy(), 1e-5, 1e-5)
    compare("reward/loss", np.array(float(j_loss.numpy())), t_loss.detach().numpy(), 0.0, LOSS_RTOL)
    r = t_rewards.detach().numpy().astype(np.float64)
    assert float(t_loss.detach()) == pytest.approx(-log_sigmoid(r[:3] - r[3:] - margin).mean(), rel=1e-6)
    for name, value in t_metrics.items():
        assert j_values[name] == pytest.approx(float(value), rel=1e-5, abs=1e-6)
    assert float(t_metrics["reward_accuracy"]) == pytest.approx((r[:3] > r[3:]).mean(), abs=1e-7)
    # a shift common to both rewards of a pair cancels: the head's bias and the final
    # LayerNorm's (which moves every reward by score.weight . bias) get none
    compare_grads("reward", t_grads, j_grads, zero=("score.bias", "transformer.ln_f.bias"))


def sequence_logprobs_numpy(logits, target, mask):
    logits = logits.astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return (np.take_along_axis(logp, target[..., None], -1)[..., 0] * mask).sum(1)


def dpo_pass(backend, cfg, policy_state, reference_state, batch, beta):
    """(loss, metrics, LoRA gradients, policy logits) of one DPO pass in `backend`."""
    if backend == "torch":
        from torch_impl.lora import mark_only_lora_as_trainable
        from torch_impl.preference import dpo_loss, token_logprobs
        policy, reference = (build_torch(cfg, s, attention="math")
                             for s in (policy_state, reference_state))
        mark_only_lora_as_trainable(policy)
        data = {k: torch.from_numpy(v) for k, v in batch.items()}
        logits, _ = policy(data["input"])
        with torch.no_grad():
            ref = token_logprobs(reference(data["input"])[0], data["target"])
        loss, metrics = dpo_loss(token_logprobs(logits, data["target"]), ref, data["mask"], beta)
        loss.backward()
        grads = {n: p.grad.numpy() for n, p in policy.named_parameters() if p.requires_grad}
        return (float(loss.detach()), {k: float(v) for k, v in metrics.items()}, grads,
                logits.detach().numpy())
    from jittor_impl.lora import mark_only_lora_as_trainable
    from jittor_impl.preference import dpo_loss, token_logprobs
    from jittor_impl.runtime import jt
    policy, reference = build_jittor(cfg, policy_state), build_jittor(cfg, reference_state)
    mark_only_lora_as_trainable(policy)
    data = {k: jt.array(v) for k, v in batch.items()}
    logits, _ = policy(data["input"])
    with jt.no_grad():
        ref = token_logprobs(reference(data["input"])[0], data["target"])
    loss, metrics = dpo_loss(token_logprobs(logits, data["target"]), ref, data["mask"], beta)
    params = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    grads = dict(zip(params, (g.numpy() for g in jt.grad(loss, list(params.values())))))
    return (float(loss.numpy()), {k: float(v.numpy()) for k, v in metrics.items()}, grads,
            logits.numpy())


def test_dpo_loss_and_gradients(batch):
    cfg, beta = config(), 0.5
    policy, reference = seeded_state(cfg, seed=6), seeded_state(cfg, seed=7)
    t_loss, t_metrics, t_grads, t_logits = dpo_pass("torch", cfg, policy, reference, batch, beta)
    with jittor_on("cpu"):
        j_loss, j_metrics, j_grads, _ = dpo_pass("jittor", cfg, policy, reference, batch, beta)
    compare("dpo/loss", np.array(j_loss), np.array(t_loss), 0.0, LOSS_RTOL)
    # implicit rewards are beta * (differences of log-probability sums of order 100, each
    # within fp32 rounding, ~1e-5, of the other backend's)
    for name, value in t_metrics.items():
        assert j_metrics[name] == pytest.approx(value, rel=1e-4, abs=2e-5), name
    assert len(t_grads) == 4  # the LoRA matrices of both layers
    compare_grads("dpo", t_grads, j_grads)
    # the formula, by hand from the policy's logits and the reference's
    ref_logits = build_torch(cfg, reference, attention="math")(torch.from_numpy(batch["input"]))[0]
    pi = sequence_logprobs_numpy(t_logits, batch["target"], batch["mask"])
    ref = sequence_logprobs_numpy(ref_logits.detach().numpy(), batch["target"], batch["mask"])
    rewards = beta * (pi - ref)
    assert t_loss == pytest.approx(-log_sigmoid(rewards[:3] - rewards[3:]).mean(), rel=1e-4)
    assert t_metrics["rewards_margin"] == pytest.approx((rewards[:3] - rewards[3:]).mean(),
                                                        rel=1e-3, abs=1e-6)


def test_dpo_starts_at_ln2(batch):
    """Policy == reference: every implicit reward is 0 and the loss is ln 2, in both backends,
    while the gradient is not zero (the LoRA B matrices get one through the chosen/rejected
    difference)."""
    cfg = config()
    state = seeded_state(cfg, seed=8)
    t_loss, t_metrics, t_grads, _ = dpo_pass("torch", cfg, state, state, batch, 0.1)
    with jittor_on("cpu"):
        j_loss, j_metrics, j_grads, _ = dpo_pass("jittor", cfg, state, state, batch, 0.1)
    for loss, metrics in ((t_loss, t_metrics), (j_loss, j_metrics)):
        assert loss == pytest.approx(math.log(2), abs=1e-7)
        assert metrics["rewards_chosen"] == metrics["rewards_rejected"] == 0.0
    compare_grads("dpo-ln2", t_grads, j_grads)


def run_script(script, backend, preference_data, vocab_dir, work_dir, extra):
    from importlib import import_module
    main = import_module(f"scripts.{script}").main
    argv = ["--backend", backend, "--device", "cpu", "--data", preference_data, "--drop_equal_pairs",
            "--limit", "48", "--n_embd", "64", "--n_layer", "2", "--n_head", "4",
            "--lora_dim", "4", "--lora_alpha", "16", "--lora_dropout", "0.1", "--shared_dropout",
            "--seq_len", "96", "--fixed_width", "--train_batch_size", "4", "--valid_batch_size",
            "4", "--max_step", "6", "--warmup_step", "1", "--lr", "0.01", "--clip", "1.0",
            "--correct_bias", "--log_interval", "3", "--eval_interval", "3", "--save_interval",
            "3", "--random_seed", "5", "--attn", "math", "--no_progress", "--vocab", vocab_dir,
            "--work_dir", str(work_dir), *extra]
    assert main(argv) == 0
    with open(os.path.join(work_dir, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(work_dir, f"{script.split('_')[0]}_eval.json")) as f:
        scores = json.load(f)
    return records, scores, read_checkpoint(os.path.join(work_dir, "model.6.pt"))


@pytest.mark.parametrize("script,extra,prefix", [
    ("reward_ft", ("--margin", "0.2"), "reward_"),
    ("dpo_ft", ("--beta", "0.5"), "rewards_")], ids=["reward", "dpo"])
def test_training_runs_agree_with_shared_dropout(tmp_path, preference_data, vocab_dir, script, extra,
                                                 prefix):
    t_records, t_scores, t_weights = run_script(script, "torch", preference_data, vocab_dir,
                                                tmp_path / "torch", extra)
    j_records, j_scores, j_weights = run_script(script, "jittor", preference_data, vocab_dir,
                                                tmp_path / "jittor", extra)
    assert_task_runs_agree(script, (t_records, t_weights), (j_records, j_weights), 6, LOSS_RTOL,
                           WEIGHT_ATOL)
    t_train = [r for r in t_records if r["kind"] == "train"]
    j_train = [r for r in j_records if r["kind"] == "train"]
    for name in ("chosen", "rejected", "margin"):
        compare(f"{script}/{prefix}{name}", np.array([r[prefix + name] for r in j_train]),
                np.array([r[prefix + name] for r in t_train]), 1e-5, 1e-4)
    # the reward model's per-step accuracies agree exactly; DPO's implicit rewards start at 0
    # (LoRA B is zero: the policy is the reference) and stay ~1e-4 for the first updates, where
    # "chosen > rejected" within fp32 rounding (~1e-5) is a coin toss: its accuracy is compared
    # on the held-out split below, after training
    if script == "reward_ft":
        assert [r[prefix + "accuracy"] for r in t_train] == [r[prefix + "accuracy"] for r in j_train]
    assert t_scores["test"]["pairs"] == j_scores["test"]["pairs"] > 0
    compare(f"{script}/test_loss", np.array(j_scores["test"]["loss"]),
            np.array(t_scores["test"]["loss"]), 0.0, LOSS_RTOL)
    assert t_scores["test"][prefix + "accuracy"] == j_scores["test"][prefix + "accuracy"]
    if script == "dpo_ft":  # LoRA dropout changes nothing while B is zero: ln 2 at step 1
        for first_step in (t_train[0], j_train[0]):
            assert first_step["loss"] == pytest.approx(math.log(2), abs=1e-6)
            assert abs(first_step["rewards_margin"]) < 1e-6


def rollouts(batch, old_logprobs, old_values):
    """PPO's inputs for the rollouts `batch` (the chosen rows as generated responses): old
    log-probabilities perturbed so that ratios leave the clip range, KL-penalised rewards,
    GAE and whitened advantages, all from shared/train/ppo_math.py, placed at the positions
    that predict each response token."""
    from shared.train.ppo_math import gae, penalized_rewards, whiten
    rows = slice(0, 3)  # the chosen responses
    mask = batch["mask"][rows]
    target = batch["target"][rows]
    starts = mask.argmax(axis=1)
    lengths = mask.sum(axis=1).astype(int)
    width = lengths.max()
    rng = np.random.default_rng(3)

    def to_response(a):  # sequence positions -> left-aligned response columns
        out = np.zeros((3, width))
        for r in range(3):
            out[r, :lengths[r]] = a[r, starts[r]:starts[r] + lengths[r]]
        return out

    def to_sequence(a):
        out = np.zeros(mask.shape, dtype=np.float32)
        for r in range(3):
            out[r, starts[r]:starts[r] + lengths[r]] = a[r, :lengths[r]]
        return out
    response_mask = to_response(mask)
    old = to_response(old_logprobs) + rng.normal(0, 0.3, size=(3, width)) * response_mask
    ref = to_response(old_logprobs) + rng.normal(0, 0.1, size=(3, width)) * response_mask
    values = to_response(old_values)
    rewards, _ = penalized_rewards([1.0, -0.5, 0.25], old, ref, response_mask, kl_coef=0.2)
    advantages, returns = gae(rewards, values, response_mask, gamma=1.0, lam=0.95)
    advantages = whiten(advantages, response_mask)
    return {"input": batch["input"][rows], "target": target, "mask": mask,
            "old_logprobs": to_sequence(old),
            "old_values": to_sequence(values + rng.normal(0, 0.3, size=(3, width)) * response_mask),
            "advantages": to_sequence(advantages), "returns": to_sequence(returns)}


def ppo_pass(backend, cfg, state, data, clip_range=0.2, value_clip=0.2):
    """(policy loss, value loss, metrics, gradients of the trained weights) of one PPO pass."""
    if backend == "torch":
        from torch_impl.lora import mark_trainable
        from torch_impl.preference import GPT2WithValueHead, ppo_losses
        model = GPT2WithValueHead(cfg)
        model.load_state_numpy(state)
        model.set_attention("math")
        mark_trainable(model, lambda n: "lora_" in n or n.startswith("v_head."))
        tensors = {k: torch.from_numpy(v) for k, v in data.items()}
        logits, values = model(tensors["input"])
        policy, value, metrics = ppo_losses(logits, values, tensors, clip_range, value_clip)
        (policy + 0.1 * value).backward()
        grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.requires_grad}
        return (float(policy.detach()), float(value.detach()),
                {k: float(v) for k, v in metrics.items()}, grads)
    from jittor_impl.lora import mark_trainable
    from jittor_impl.preference import GPT2WithValueHead, ppo_losses
    from jittor_impl.runtime import jt
    model = GPT2WithValueHead(cfg)
    model.load_state_numpy(state)
    model.set_attention("math")
    mark_trainable(model, lambda n: "lora_" in n or n.startswith("v_head."))
    tensors = {k: jt.array(v) for k, v in data.items()}
    logits, values = model(tensors["input"])
    policy, value, metrics = ppo_losses(logits, values, tensors, clip_range, value_clip)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = dict(zip(params, (g.numpy() for g in jt.grad(policy + 0.1 * value,
                                                          list(params.values())))))
    return (float(policy.numpy()), float(value.numpy()),
            {k: float(v.numpy()) for k, v in metrics.items()}, grads)


def test_ppo_losses_and_gradients_from_identical_rollouts(batch):
    """The same rollouts (advantages and returns computed once, on the host) give the same
    clipped policy and value losses, metrics and gradients (LoRA and value head) in both."""
    from shared.model.value_head import init_value_head
    from torch_impl.preference import GPT2WithValueHead, token_logprobs
    cfg = config()
    state = {**seeded_state(cfg, seed=9), **init_value_head(cfg, 9)}
    start = GPT2WithValueHead(cfg)
    start.load_state_numpy(state)
    start.set_attention("math")
    with torch.no_grad():
        logits, values = start(torch.from_numpy(batch["input"][:3]))
        old_logprobs = token_logprobs(logits, torch.from_numpy(batch["target"][:3])).numpy()
    data = rollouts(batch, old_logprobs, values.numpy())
    t_policy, t_value, t_metrics, t_grads = ppo_pass("torch", cfg, state, data)
    with jittor_on("cpu"):
        j_policy, j_value, j_metrics, j_grads = ppo_pass("jittor", cfg, state, data)
    compare("ppo/policy_loss", np.array(j_policy), np.array(t_policy), 0.0, LOSS_RTOL)
    compare("ppo/value_loss", np.array(j_value), np.array(t_value), 0.0, LOSS_RTOL)
    for name, value in t_metrics.items():
        assert j_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # the perturbed ratios and old values reach both branches of each clip
    assert 0 < t_metrics["clip_fraction"] < 1 and 0 < t_metrics["value_clip_fraction"] < 1
    assert len(t_grads) == 6  # the LoRA matrices of both layers and the value head
    compare_grads("ppo", t_grads, j_grads)
    # the clipped policy loss, by hand
    m = data["mask"]
    ratio = np.exp(old_logprobs - data["old_logprobs"])
    adv = data["advantages"]
    by_hand = (np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2)) * m).sum() / m.sum()
    assert t_policy == pytest.approx(by_hand, rel=1e-5)
