"""Hugging Face round trips (shared/model/hf_export.py, scripts/export_hf.py): the peft adapter gives the
same c_attn delta weight as our MergedLinear LoRA, comes back bit-exact, and a transformers
GPT-2 export reproduces the logits; with transformers + peft installed, they load the exports
and give our logits."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.model.checkpoint import load_for_model, read_checkpoint
from shared.model.config import GPT2Config
from shared.model.hf_export import (HFFormatError, config_from_hf, export_hf_model,
                                    export_peft_adapter, import_peft_adapter, lora_delta,
                                    lora_to_peft, peft_adapter_config, peft_delta, peft_to_lora)
from alignment.harness import randomize_lora_B
from shared.model.params import init_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = GPT2Config(n_embd=32, n_layer=2, n_head=4,
                    lora_attn_dim=3, lora_attn_alpha=12)
IDS = np.random.default_rng(0).integers(0, 50257, size=(2, 11))


@pytest.fixture(scope="module")
def state():
    return randomize_lora_B(init_state_dict(CONFIG, seed=5), seed=5, std=0.2)


def torch_logits(config, state_or_path, ids=IDS):
    from torch_impl.model import GPT2LMModel
    model = GPT2LMModel(config).eval()
    model.load_weight(state_or_path)
    with torch.no_grad():
        return model(torch.from_numpy(ids))[0].numpy()


def test_peft_adapter_has_the_same_delta_weight(state):
    arrays = lora_to_peft(state, CONFIG)
    cfg = peft_adapter_config(CONFIG)
    assert cfg["r"] == 6 and cfg["lora_alpha"] == 24 and cfg["fan_in_fan_out"]
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_"
    assert arrays[key + "A.weight"].shape == (6, 32) and arrays[key + "B.weight"].shape == (96, 6)
    assert sorted(arrays) == sorted(f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{m}.weight"
                                    for i in range(2) for m in "AB")
    for layer in range(CONFIG.n_layer):
        ours, peft = lora_delta(state, CONFIG, layer), peft_delta(arrays, cfg, layer)
        assert np.abs(ours).max() > 1e-3  # the update is not trivially zero
        np.testing.assert_allclose(peft, ours, atol=1e-7, rtol=0)
        assert not peft[:, 32:64].any()  # the key third stays untouched


def test_adapter_round_trip_is_exact(state, tmp_path):
    export_peft_adapter(state, CONFIG, tmp_path / "adapter", base_model="base")
    back, settings = import_peft_adapter(tmp_path / "adapter", CONFIG)
    assert (settings["lora_dim"], settings["lora_alpha"]) == (3, 12)
    assert "lora_layer_dims" not in settings and "lora_layer_alphas" not in settings
    for name, value in back.items():
        np.testing.assert_array_equal(value, state[name])
    assert len(back) == 2 * CONFIG.n_layer
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        assert json.load(f)["target_modules"] == ["c_attn"]


def test_a_dense_peft_adapter_imports_with_the_same_delta():
    rng = np.random.default_rng(1)
    e, rank = 32, 4
    arrays = {}
    for i in range(2):
        b = rng.normal(size=(3 * e, rank)).astype(np.float32)
        b[e:2 * e] = 0  # no key update: representable
        key = f"base_model.model.transformer.h.{i}.attn.c_attn.lora_"
        arrays[key + "A.weight"] = rng.normal(size=(rank, e)).astype(np.float32)
        arrays[key + "B.weight"] = b
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "fan_in_fan_out": True}
    two_layers = GPT2Config(n_embd=e, n_layer=2, n_head=4)
    state, settings = peft_to_lora(arrays, cfg, two_layers)
    our_rank, alpha = settings["lora_dim"], settings["lora_alpha"]
    assert our_rank == rank and alpha == 8
    for i in range(2):
        np.testing.assert_allclose(lora_delta(state, alpha / our_rank, i), peft_delta(arrays, cfg, i),
                                   atol=1e-5, rtol=1e-6)
    arrays["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"][40, 0] = 1.0
    with pytest.raises(HFFormatError, match="layer 1: lora_B updates the key projection"):
        peft_to_lora(arrays, cfg, two_layers)
    with pytest.raises(HFFormatError, match="fan_in_fan_out"):
        peft_to_lora(arrays, dict(cfg, fan_in_fan_out=False), two_layers)
    with pytest.raises(HFFormatError, match="'base_model.model.lm_head.lora_A.weight' is not"):
        peft_to_lora({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 32))}, cfg,
                     two_layers)


def test_full_export_reproduces_the_lora_model(state, tmp_path):
    export_hf_model(state, CONFIG, tmp_path / "hf")
    base_config = config_from_hf(tmp_path / "hf")
    assert (base_config.n_embd, base_config.n_layer, base_config.n_positions) == (32, 2, 1024)
    raw = read_checkpoint(tmp_path / "hf" / "model.safetensors")
    assert "transformer.h.0.attn.c_attn.weight" in raw and not any("lora" in k for k in raw)
    merged = torch_logits(base_config, str(tmp_path / "hf" / "model.safetensors"))
    np.testing.assert_allclose(merged, torch_logits(CONFIG, state), atol=2e-5, rtol=0)
    with pytest.raises(HFFormatError, match="lack"):
        export_hf_model({k: v for k, v in state.items() if "lora" in k}, CONFIG, tmp_path / "x")


def test_script_export_then_import(state, tmp_path):
    from shared.model.checkpoint import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "run.safetensors", state)
    shape = ["--n_embd", "32", "--n_layer", "2", "--n_head", "4"]
    script = os.path.join(ROOT, "scripts", "export_hf.py")
    out = subprocess.run([sys.executable, script, "export", "--init_checkpoint", ckpt, *shape,
                          "--lora_dim", "3", "--lora_alpha", "12", "--peft_dir",
                          str(tmp_path / "peft"), "--hf_dir", str(tmp_path / "hf")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "peft")) == ["adapter_config.json",
                                                     "adapter_model.safetensors"]
    out = subprocess.run([sys.executable, script, "import", "--peft_dir", str(tmp_path / "peft"),
                          *shape, "--out", str(tmp_path / "lora.pt")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "LoRA rank 3, alpha 12 (stored in" in out.stdout
    from shared.model.lora_settings import read_lora_settings
    assert read_lora_settings(tmp_path / "lora.pt") == {
        "lora_dim": 3, "lora_alpha": 12.0, "lora_targets": ["c_attn.query", "c_attn.value"]}
    back = load_for_model(str(tmp_path / "lora.pt"), CONFIG, base_loaded=True)
    for name, value in back.items():
        np.testing.assert_array_equal(value, state[name])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text("{\"r\": 4,\n oops}")
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"")
    out = subprocess.run([sys.executable, script, "import", "--peft_dir", str(tmp_path / "bad"),
                          *shape, "--out", str(tmp_path / "x.pt")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "adapter_config.json:2:2: invalid JSON" in out.stderr


def test_transformers_and_peft_load_the_exports(state, tmp_path):
    """Where transformers and peft are installed (the GPU machine), they read our exports and
    compute our logits: the base + peft adapter, and the merged full model."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    base = {k: v for k, v in state.items() if "lora" not in k}
    base_config = GPT2Config(**dict(CONFIG.to_dict(), lora_attn_dim=0))
    export_hf_model(base, base_config, tmp_path / "base")
    export_peft_adapter(state, CONFIG, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    export_hf_model(state, CONFIG, tmp_path / "merged")
    ours = torch_logits(CONFIG, state)
    ids = torch.from_numpy(IDS)
    hf_base = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "base")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(hf_base(ids).logits.numpy(), torch_logits(base_config, base),
                                   atol=2e-5, rtol=0)
        with_adapter = peft.PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
        np.testing.assert_allclose(with_adapter(input_ids=ids).logits.numpy(), ours,
                                   atol=2e-5, rtol=0)
        merged = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "merged")).eval()
        np.testing.assert_allclose(merged(ids).logits.numpy(), ours, atol=2e-5, rtol=0)
