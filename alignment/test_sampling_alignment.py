"""Sampling generation (torch_impl/sampler.py, jittor_impl/sampler.py, scripts/generate.py):
the same weights and seed give the same text on both backends, and the cached generation
draws what an uncached full forward would."""
import os
import subprocess
import sys

import pytest

from alignment.tiny_e2e_model import tiny_config, trained_state
from shared.model.checkpoint import save_checkpoint
from shared.text.e2e_data import encode_record
from shared.decode.sampling import SampleStreams, SamplingSettings
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MR = "name : The Eagle | Type : coffee shop | food : French | area : riverside"
SETTINGS = SamplingSettings(temperature=0.8, top_k=40, top_p=0.95, max_new_tokens=24)
SEED, SAMPLES = 3, 4


@pytest.fixture(scope="module")
def state(vocab_dir, e2e_dir):
    return trained_state(vocab_dir, e2e_dir)


@pytest.fixture(scope="module")
def prompt_ids(vocab_dir):
    return encode_record({"context": MR, "completion": ""}, load_tokenizer(vocab_dir))["context"]


def build(backend, state):
    if backend == "torch":
        from torch_impl.sampler import generate
        from torch_impl.model import GPT2LMModel
    else:
        from jittor_impl.sampler import generate
        from jittor_impl.model import GPT2LMModel
    model = GPT2LMModel(tiny_config())
    model.load_state_numpy(state)
    return model, generate


def test_both_backends_sample_the_same_tokens(state, prompt_ids):
    samples = {}
    for backend in ("torch", "jittor"):
        model, generate = build(backend, state)
        samples[backend] = generate(model, prompt_ids, SETTINGS, SEED, SAMPLES)
    assert samples["torch"] == samples["jittor"]
    assert len({tuple(s) for s in samples["torch"]}) > 1, "all samples are the same"
    assert all(len(s) > 0 and EOT_ID not in s for s in samples["torch"])


def test_cached_generation_equals_full_forward_sampling(state, prompt_ids):
    import torch
    model, generate = build("torch", state)
    cached = generate(model, prompt_ids, SETTINGS, SEED, SAMPLES)
    streams = SampleStreams(SETTINGS, SEED, SAMPLES)
    rows = [list(prompt_ids) for _ in range(SAMPLES)]
    with torch.no_grad():
        while not streams.done:  # every row has the same length: no padding needed
            logits, _ = model(torch.tensor(rows))
            feed = streams.step(logits[:, -1].numpy())
            rows = [r + [int(t)] for r, t in zip(rows, feed)]
    assert streams.tokens == cached


def test_generate_script_prints_the_same_text_with_both_backends(tmp_path, state):
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", state)
    config = tiny_config()
    outputs = {}
    for backend in ("torch", "jittor"):
        argv = [sys.executable, os.path.join(ROOT, "scripts", "generate.py"),
                "--backend", backend, "--device", "cpu", "--prompt", MR, "--add_bos",
                "--temperature", "0.8", "--top_k", "40", "--top_p", "0.95",
                "--max_new_tokens", "24", "--seed", str(SEED), "--num_samples", "2",
                "--n_embd", str(config.n_embd), "--n_layer", str(config.n_layer),
                "--n_head", str(config.n_head), "--lora_dim", str(config.lora_attn_dim),
                "--lora_alpha", str(config.lora_attn_alpha), "--init_checkpoint", checkpoint]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs[backend] = proc.stdout
    assert outputs["torch"] == outputs["jittor"]
    texts = [line for line in outputs["torch"].splitlines() if not line.startswith("=== sample")]
    assert len(texts) == 2 and all(t.startswith(MR) and len(t) > len(MR) for t in texts)
