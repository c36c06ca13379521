"""PPO (`scripts/ppo_ft.py`), both backends: a rollout from the same weights samples the same
tokens and gets the same scores, log-probabilities and values; from one rollout (advantages and
returns computed once, on the host) a PPO step gives the same loss, metrics and gradients of the
LoRA matrices and the value head (or, with --lora_dim 0, of every weight); and four PPO iterations run side by side log the same rewards,
KL, losses and end on the same weights.

A tiny GPT-2 (2 layers, 32 wide) with LoRA, seeded, no pretraining; the reward model is a tiny
reward_ft.py run on the same data (its folder: reward_model.json and the checkpoint). Tolerances (fp32, CPU):
losses and logged values 1e-5 relative, gradients 1e-4 of each tensor's scale, weights 1e-5.
"""
import json
import os

import numpy as np
import pytest

from alignment.harness import compare, jittor_on

LOSS_RTOL, GRAD_SCALE_TOL, GRAD_RTOL, WEIGHT_ATOL = 1e-5, 1e-4, 1e-3, 1e-5
TINY = ["--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--seq_len", "128",
        "--drop_equal_pairs", "--limit", "40", "--attn", "math", "--no_progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, preference_data, vocab_dir):
    """A tiny reward model trained for a few steps by reward_ft.py (torch)."""
    from scripts.reward_ft import main
    work = tmp_path_factory.mktemp("reward")
    assert main(["--backend", "torch", "--data", preference_data, "--vocab", vocab_dir, *TINY,
                 "--lora_dim", "0", "--max_step", "4", "--train_batch_size", "4", "--lr", "1e-3",
                 "--random_seed", "3", "--work_dir", str(work)]) == 0
    return str(work)


def ppo_argv(backend, preference_data, vocab_dir, reward_model, work_dir, *extra):
    return ["--backend", backend, "--data", preference_data, "--vocab", vocab_dir, *TINY,
            "--reward_model", reward_model, "--lora_dim", "4", "--lora_alpha", "16",
            "--rollout_batch", "4", "--train_batch_size", "2", "--response_len", "12",
            "--ppo_epochs", "1", "--lr", "0.01", "--random_seed", "7",
            "--work_dir", str(work_dir), *extra]


def build(backend, argv):
    """(backend object, rollouts) as scripts/ppo_ft.py builds them, without training."""
    from backends import ppo_backend
    from shared.tasks.ppo_task import (PPORollouts, build_ppo_parser, ppo_problems,
                                       reward_model, trainer_backend)
    from shared.tasks.preference_task import preference_datasets
    from shared.text.tokenizer import load_tokenizer
    from shared.train.train_args import model_config, validate
    args = build_ppo_parser().parse_args(argv)
    assert ppo_problems(args) == []
    args = validate(args, data_files=False)
    data = preference_datasets(args, load_tokenizer(args.vocab))
    config = model_config(args)
    cls = trainer_backend(ppo_backend(backend), reward_model(args.reward_model, config))
    rollouts = PPORollouts(args, data["train"])
    rollouts.backend = cls(config, args)
    return rollouts.backend, rollouts


def gradients(backend_name, backend):
    if backend_name == "torch":
        return {n: p.grad.numpy().copy() for n, p in backend.params.items()}
    names = {id(p): n for n, p in backend.params.items()}
    return {names[id(p)]: g.numpy().copy() for group in backend.optimizer.param_groups
            for p, g in backend.optimizer.grads_of(group)}


@pytest.mark.parametrize("lora_dim", ["4", "0"])
def test_rollout_and_step_agree(tmp_path, preference_data, vocab_dir, reward_model, lora_dim):
    """The same sampled tokens, scores, log-probabilities and values; then from the torch
    rollout's minibatch the same PPO loss, metrics and gradients in both backends, of the LoRA
    matrices and the value head (4) or of every weight (0: the whole policy trains)."""
    def argv(backend):
        return ppo_argv(backend, preference_data, vocab_dir, reward_model, tmp_path / backend,
                        "--ptx_coef", "0.5", "--fixed_width", "--max_epoch", "1",
                        "--lora_dim", lora_dim)
    t_backend, t_rollouts = build("torch", argv("torch"))
    t_state = t_rollouts.rollout(1, 7)
    batch = t_rollouts.minibatch(t_state, np.array([3, 0]), 1, 0)
    t_backend.set_step(1)
    t_loss = float(t_backend.forward_backward(batch, 1.0, 0.0))
    t_metrics = {k: float(v) for k, v in t_backend.take_metrics().items()}
    t_grads = gradients("torch", t_backend)
    with jittor_on("cpu"):
        j_backend, j_rollouts = build("jittor", argv("jittor"))
        j_state = j_rollouts.rollout(1, 7)
        j_backend.set_step(1)
        j_loss = float(j_backend.forward_backward(batch, 1.0, 0.0).numpy())
        j_metrics = {k: float(v.numpy()) for k, v in j_backend.take_metrics().items()}
        j_grads = gradients("jittor", j_backend)
    # the rollout: identical tokens, then values within fp32 rounding
    assert np.array_equal(t_state["input"], j_state["input"])
    assert np.array_equal(t_state["mask"], j_state["mask"])
    for key in ("scores", "old_logprobs", "old_values"):
        m = t_state["mask"] if key != "scores" else 1.0
        compare(f"ppo/rollout/{key}", j_state[key] * m, t_state[key] * m, 1e-5, 1e-5)
    for key in ("advantages", "returns"):  # the host's arithmetic on those values
        compare(f"ppo/rollout/{key}", j_state[key], t_state[key], 1e-4, 1e-4)
    compare("ppo/rollout/stats", j_state["stats"], t_state["stats"], 1e-6, 1e-5)
    # one step from the same minibatch
    compare("ppo/loss", np.array(j_loss), np.array(t_loss), 0.0, LOSS_RTOL)
    assert sorted(t_metrics) == sorted(j_metrics)
    for name in ("policy_loss", "value_loss", "ptx_loss", "returns", "reward", "kl"):
        compare(f"ppo/{name}", np.array(j_metrics[name]), np.array(t_metrics[name]), 1e-7, LOSS_RTOL)
    assert sorted(t_grads) == sorted(j_grads)
    if lora_dim == "0":  # every weight of the 2-layer model (12 a layer, 2 embeddings, 2 of
        assert len(t_grads) == 2 * 12 + 2 + 2 + 2  # the final LayerNorm) and the value head
    else:
        assert len(t_grads) == 2 * 2 + 2  # LoRA A, B x 2 layers + v_head
    for name, grad in t_grads.items():
        scale = float(np.abs(grad).max())
        if name.endswith("lora_A"):  # LoRA's B starts at zero, so A's first gradient is zero
            assert scale == 0 and np.abs(j_grads[name]).max() == 0, name
            continue
        assert scale > 0, f"no gradient reached {name}"
        compare(f"ppo/grad/{name}", j_grads[name], grad, GRAD_SCALE_TOL * scale, GRAD_RTOL)


def run(backend, argv):
    from scripts.ppo_ft import main
    assert main(argv) == 0
    work = argv[argv.index("--work_dir") + 1]
    with open(os.path.join(work, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(work, "ppo_eval.json")) as f:
        scores = json.load(f)
    return records, scores, work


def test_four_iterations_agree(tmp_path, preference_data, vocab_dir, reward_model):
    """Four PPO iterations (adaptive KL coefficient, tempered top-k sampling, 2 minibatch steps
    each) in both backends: the same rollouts (tokens), logged rewards, KL, coefficients and
    losses, the same weights."""
    from shared.model.checkpoint import read_checkpoint
    from shared.model.checkpoint import load_trainer_state
    extra = ("--fixed_width", "--max_epoch", "4", "--target_kl", "0.5", "--kl_coef", "0.1",
             "--temperature", "0.8", "--top_k", "50", "--eval_prompts", "3",
             "--log_interval", "2", "--eval_interval", "4", "--save_interval", "4")
    t_records, t_scores, t_work = run("torch", ppo_argv("torch", preference_data, vocab_dir, reward_model,
                                                        tmp_path / "torch", *extra))
    with jittor_on("cpu"):
        j_records, j_scores, j_work = run("jittor", ppo_argv("jittor", preference_data, vocab_dir,
                                                             reward_model, tmp_path / "jittor", *extra))
    t_train = [r for r in t_records if r["kind"] == "train"]
    j_train = [r for r in j_records if r["kind"] == "train"]
    assert [r["step"] for r in t_train] == [r["step"] for r in j_train] == list(range(1, 9))
    for name in ("loss", "reward", "kl", "kl_coef", "policy_loss", "value_loss", "returns",
                 "entropy", "response_length"):
        # the KL is a sum of differences of log-probabilities near 0: its error is absolute
        compare(f"ppo-run/{name}", np.array([r[name] for r in j_train]),
                np.array([r[name] for r in t_train]), 1e-5 if name == "kl" else 1e-6, LOSS_RTOL)
    coefs = [r["kl_coef"] for r in t_train]
    assert len(set(coefs)) > 1  # the adaptive controller moved it
    # each iteration's rollout: the same tokens (the checkpoints at its end hold it)
    for step in (4, 8):
        t_meta, t_arrays = load_trainer_state(os.path.join(t_work, f"trainer_state.{step}.npz"))
        j_meta, j_arrays = load_trainer_state(os.path.join(j_work, f"trainer_state.{step}.npz"))
        assert np.array_equal(t_arrays["rollout/input"], j_arrays["rollout/input"])
        assert t_arrays["rollout/stats"][0] == step // 2
    t_weights = read_checkpoint(os.path.join(t_work, "model.8.pt"))
    j_weights = read_checkpoint(os.path.join(j_work, "model.8.pt"))
    assert sorted(t_weights) == sorted(j_weights)
    for name in t_weights:
        compare(f"ppo-run/weights/{name}", j_weights[name], t_weights[name], WEIGHT_ATOL, 0.0)
    # the held-out comparison: the same responses, hence the same scores
    for key in ("reward_policy", "reward_start", "win_rate"):
        compare(f"ppo-run/test/{key}", np.array(j_scores["test"][key]),
                np.array(t_scores["test"][key]), 1e-5, 1e-5)
    assert [e["policy"] for e in t_scores["test"]["examples"]] == \
        [e["policy"] for e in j_scores["test"]["examples"]]
