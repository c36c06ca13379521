"""Instruction tuning, both backends: Alpaca batches with the response-only (and full) loss mask,
gradients, a 16-step training run with shared dropout masks, and generated text (greedy test
responses, sampled responses, a scripted chat) from the same weights and seed.

Data: the first entries of instruction-data.json (INSTRUCT_DATA, else ../shared/data/instruct),
split and encoded by shared/text/instruct_data.py. Tolerances as the E2E suite's (fp32, CPU).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from alignment.harness import (build_jittor, build_torch, compare, jittor_forward, jittor_grads,
                               jittor_on, seeded_state, tiny_config, torch_forward, torch_grads)
from alignment.test_train_alignment import assert_same_run
from shared.text.batching import FTDataset
from shared.text.instruct_data import encode_entry, prepare_instruct, read_entries
from shared.decode.sampling import SamplingSettings
from shared.text.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGITS_ATOL, LOGITS_RTOL = 5e-6, 1e-4
LOSS_ATOL, LOSS_RTOL = 1e-5, 1e-5
GRAD_SCALE_TOL, GRAD_RTOL = 1e-4, 1e-3
SEQ_LEN = 160


@pytest.fixture(scope="module")
def data_file():
    path = os.environ.get("INSTRUCT_DATA") or os.path.join(ROOT, "..", "shared", "data",
                                                           "instruct", "instruction-data.json")
    if not os.path.isfile(path):
        pytest.skip("no instruction-data.json (set INSTRUCT_DATA)")
    return path


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return load_tokenizer(vocab_dir)


def config():
    return tiny_config(lora_dim=4, n_positions=256, n_ctx=256)


def instruct_batch(data_file, tok, response_only):
    entries = read_entries(data_file)[:3]  # one of them has an input
    pairs = [encode_entry(e, tok, response_only) for e in entries]
    batch = FTDataset([(p["context"], p["completion"]) for p in pairs], 3, SEQ_LEN).collate([0, 1, 2])
    return batch["input"], batch["target"], batch["mask"]


@pytest.mark.parametrize("response_only", [True, False], ids=["response-only", "full-loss"])
def test_instruct_loss_and_logits(data_file, tok, response_only):
    ids, labels, mask = instruct_batch(data_file, tok, response_only)
    assert 0 < mask.sum() < mask.size
    state = seeded_state(config(), seed=2)
    t_logits, t_loss = torch_forward(build_torch(config(), state, attention="math"), ids,
                                     labels=labels, mask=mask, label_smooth=0.1)
    with jittor_on("cpu"):
        j_logits, j_loss = jittor_forward(build_jittor(config(), state), ids, labels=labels,
                                          mask=mask, label_smooth=0.1)
    tag = "response-only" if response_only else "full-loss"
    compare(f"instruct logits ({tag})", j_logits, t_logits, LOGITS_ATOL, LOGITS_RTOL)
    compare(f"instruct loss ({tag})", j_loss.reshape(()), t_loss, LOSS_ATOL, LOSS_RTOL)


def test_instruct_lora_gradients(data_file, tok):
    ids, labels, mask = instruct_batch(data_file, tok, True)
    state = seeded_state(config(), seed=3)
    from torch_impl.lora import mark_only_lora_as_trainable as torch_lora_only
    torch_model = build_torch(config(), state, attention="math")
    torch_lora_only(torch_model)
    t_loss, t_grads = torch_grads(torch_model, ids, labels, mask)
    with jittor_on("cpu"):
        from jittor_impl.lora import mark_only_lora_as_trainable as jittor_lora_only
        jittor_model = build_jittor(config(), state)
        jittor_lora_only(jittor_model)
        j_loss, j_grads = jittor_grads(jittor_model, ids, labels, mask)
    assert sorted(j_grads) == sorted(n for n, g in t_grads.items() if g is not None)
    assert len(j_grads) == 4
    compare("instruct loss (grad pass)", j_loss, t_loss, LOSS_ATOL, LOSS_RTOL)
    for name, grad in j_grads.items():
        scale = float(np.abs(t_grads[name]).max())
        assert scale > 0
        compare(f"instruct grad {name}", grad, t_grads[name], GRAD_SCALE_TOL * scale, GRAD_RTOL)


def test_instruct_training_runs_agree_with_shared_dropout(tmp_path, data_file, tok):
    from alignment.test_train_alignment import run
    prepare_instruct(data_file, tmp_path / "data", tok, seed=5, limit=80)
    # the E2E training run's flags, on instruction data with response-only masks
    extra = ("--lora_dropout", "0.1", "--shared_dropout", "--seq_len", "128")
    a = run(tmp_path / "data", tmp_path / "torch", "torch", extra=extra)
    b = run(tmp_path / "data", tmp_path / "jittor", "jittor", extra=extra)
    rel, worst = assert_same_run(tmp_path, a, b)
    compare("instruct 16-step training loss (rel)", np.array([rel]), np.zeros(1), 1e-5, 0.0)
    compare("instruct final LoRA weights (max abs)", np.array([worst]), np.zeros(1), 1e-5, 0.0)


def build_inference(backend, state, cfg):
    from shared.decode.inference_model import InferenceModel
    if backend == "torch":
        from torch_impl.sampler import generate
        model = build_torch(cfg, state, attention="math")
        return InferenceModel("torch", model, None, generate, lambda x: x.cpu().numpy())
    from jittor_impl.sampler import generate
    return InferenceModel("jittor", build_jittor(cfg, state), None, generate, lambda x: x.numpy())


@pytest.mark.parametrize("temperature", [0.0, 0.9], ids=["greedy", "sampled"])
def test_generated_responses_are_the_same(data_file, tok, temperature):
    from shared.tasks.instruct_eval import generate_responses
    entries = [dict(e, id=i) for i, e in enumerate(read_entries(data_file)[:3])]
    settings = SamplingSettings(temperature=temperature, top_k=40, top_p=0.95, max_new_tokens=12)
    state = seeded_state(config(), seed=4)
    texts = {}
    for backend in ("torch", "jittor"):
        with jittor_on("cpu"):
            model = build_inference(backend, state, config())
            texts[backend] = generate_responses(model, entries, tok, settings, seed=7)
    assert texts["torch"] == texts["jittor"]
    assert all(texts["torch"]) and len(set(texts["torch"])) > 1


def test_chat_script_prints_the_same_conversation(tmp_path, vocab_dir):
    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import GPT2Config
    from alignment.harness import randomize_lora_B
    from shared.model.params import init_state_dict
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, lora_attn_dim=4, lora_attn_alpha=16)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors",
                           randomize_lora_B(init_state_dict(cfg, 6), 6, std=0.3))
    outputs = {}
    for backend in ("torch", "jittor"):
        argv = [sys.executable, os.path.join(ROOT, "scripts", "chat.py"), "--backend", backend,
                "--device", "cpu", "--init_checkpoint", ckpt, "--n_embd", "32", "--n_layer", "2",
                "--n_head", "2", "--lora_dim", "4", "--lora_alpha", "16", "--vocab", vocab_dir,
                "--max_new_tokens", "8", "--temperature", "0.8", "--context", "60"]
        proc = subprocess.run(argv, input="Name a color.\nWhy that one?\nAnd a fruit?\n",
                              capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr
        outputs[backend] = proc.stdout
    assert outputs["torch"] == outputs["jittor"]
    assert outputs["torch"].count(">>> ") == 4 and "(dropped" in outputs["torch"]
