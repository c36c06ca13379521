"""Checkpoint loading into both backends, in every real key layout, and its errors.

Each test writes a checkpoint from a tiny config in one of the layouts met in practice (built
here with torch.save / safetensors, key names as those projects write them), loads it through
`GPT2LMModel.load_weight` of BOTH backends, and checks the loaded weights equal the source
bit for bit. Every tensor holds its own random values, so a key mapped to the wrong parameter
cannot pass unnoticed (initial LayerNorm weights are all ones and would hide it).
"""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignment.harness import DEVICES, jittor_on
from shared.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from shared.model.config import GPT2Config
from shared.model.params import is_lora_name, parameter_shapes

CONFIG = dict(n_embd=32, n_layer=2, n_head=2, n_positions=32, n_ctx=32)
LORA_DIM = 2


def config(lora_dim=LORA_DIM):
    return GPT2Config(**CONFIG, lora_attn_dim=lora_dim)


def distinct_state(cfg, seed=0):
    """Canonical weights, every tensor drawn from its own stream (none all-ones or all-zeros)."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0.0, 0.1, size=shape).astype(np.float32)
            for name, shape in parameter_shapes(cfg).items()}


BASE = distinct_state(config(), seed=1)  # the base weights and LoRA weights every test writes
BASE_ONLY = {k: v for k, v in BASE.items() if not is_lora_name(k)}
LORA_ONLY = {k: v for k, v in BASE.items() if is_lora_name(k)}


def tensors(state, prefix="", strip="transformer."):
    """{prefix + name without `strip`: torch tensor}, each tensor its own copy."""
    return {prefix + k[len(strip):] if k.startswith(strip) else prefix + k: torch.tensor(v)
            for k, v in state.items()}


def mask_buffers(prefix, n_layer=CONFIG["n_layer"], n_ctx=CONFIG["n_ctx"]):
    """The causal-mask buffers Hugging Face GPT-2 (and microsoft/LoRA) keep in the state dict."""
    out = {}
    for i in range(n_layer):
        causal = torch.tril(torch.ones(n_ctx, n_ctx)).view(1, 1, n_ctx, n_ctx)
        out[f"{prefix}h.{i}.attn.bias"] = causal
        out[f"{prefix}h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return out


def tf_style(state):
    """The old port's names: LayerNorm `.g`/`.b`, Conv1D `.w`/`.b`, embeddings `.weight`."""
    out = {}
    for key, value in tensors(state).items():
        stem, leaf = key.rsplit(".", 1)
        if stem.startswith(("wte", "wpe")):
            out[key] = value
        elif ".ln_" in f".{stem}":
            out[f"{stem}.{'g' if leaf == 'weight' else 'b'}"] = value
        else:
            out[f"{stem}.{'w' if leaf == 'weight' else 'b'}"] = value
    return out


def save_safetensors(path, state_dict):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))


def write_layout(folder, layout):
    """Write BASE (or a part of it) in `layout`; return (path, weights it holds)."""
    wte = torch.tensor(BASE["transformer.wte.weight"])
    if layout == "hf_pytorch_model_bin":  # the original gpt2 file: no prefix, mask buffers
        path = folder / "pytorch_model.bin"
        torch.save({**tensors(BASE_ONLY), **mask_buffers("")}, path)
        return path, BASE_ONLY
    if layout == "hf_lm_head_prefixed":  # GPT2LMHeadModel.state_dict(): prefix, tied head
        path = folder / "pytorch_model.bin"
        torch.save({**tensors(BASE_ONLY, "transformer."), **mask_buffers("transformer."),
                    "lm_head.weight": wte.clone()}, path)
        return path, BASE_ONLY
    if layout == "hf_safetensors":
        path = folder / "model.safetensors"
        save_safetensors(path, tensors(BASE_ONLY))
        return path, BASE_ONLY
    if layout == "hf_safetensors_prefixed":
        path = folder / "model.safetensors"
        save_safetensors(path, {**tensors(BASE_ONLY, "transformer."),
                                "lm_head.weight": wte.clone()})
        return path, BASE_ONLY
    if layout == "tf_style_names":
        path = folder / "pytorch_model.bin"
        torch.save(tf_style(BASE_ONLY), path)
        return path, BASE_ONLY
    if layout == "lora_ddp_full":  # microsoft/LoRA gpt2_ft.py under DDP: module.transformer.
        path = folder / "model.26290.pt"
        torch.save({"model_state_dict": {**tensors(BASE, "module.transformer."),
                                         **mask_buffers("module.transformer."),
                                         "module.lm_head.decoder.weight": wte.clone()}}, path)
        return path, BASE
    if layout == "lora_plain_full":  # the same without DDP: transformer.
        path = folder / "model.26290.pt"
        torch.save({"model_state_dict": {**tensors(BASE, "transformer."),
                                         **mask_buffers("transformer."),
                                         "lm_head.decoder.weight": wte.clone()}}, path)
        return path, BASE
    raise ValueError(layout)


BASE_LAYOUTS = ["hf_pytorch_model_bin", "hf_lm_head_prefixed", "hf_safetensors",
                "hf_safetensors_prefixed", "tf_style_names"]
FULL_LAYOUTS = ["lora_ddp_full", "lora_plain_full"]


def backends(cfg, device="cpu"):
    """[(name, fresh model)] for both backends; call inside `jittor_on(device)`."""
    from jittor_impl.model import GPT2LMModel as JittorGPT2
    from torch_impl.model import GPT2LMModel as TorchGPT2
    return [("torch", TorchGPT2(cfg).to(device)), ("jittor", JittorGPT2(cfg))]


def assert_holds(backend, model, expected):
    got = model.state_dict_numpy()
    for name, value in expected.items():
        assert np.array_equal(got[name], value), f"{backend}: {name} differs from the checkpoint"


# ------------------------------------------------------------------------- real key layouts
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", BASE_LAYOUTS + FULL_LAYOUTS)
def test_layout_loads_into_both_backends(tmp_path, layout, device):
    path, expected = write_layout(tmp_path, layout)
    with jittor_on(device):
        for backend, model in backends(config(), device):
            lora_before = model.state_dict_numpy(lora_only=True)
            assert not model.base_loaded
            model.load_weight(str(path))
            assert model.base_loaded
            assert_holds(backend, model, expected)
            if layout in BASE_LAYOUTS:  # a base checkpoint leaves the LoRA weights as they were
                assert_holds(backend, model, lora_before)


@pytest.mark.parametrize("layout", BASE_LAYOUTS)
def test_base_layout_loads_into_model_without_lora(tmp_path, layout):
    path, expected = write_layout(tmp_path, layout)
    with jittor_on("cpu"):
        for backend, model in backends(config(lora_dim=0)):
            model.load_weight(path)
            assert_holds(backend, model, expected)


@pytest.mark.parametrize("prefix", ["module.transformer.", "transformer."])
def test_lora_only_checkpoint_after_base(tmp_path, prefix):
    base_path, _ = write_layout(tmp_path, "hf_pytorch_model_bin")
    lora_path = tmp_path / "lora_only.pt"
    torch.save({"model_state_dict": tensors(LORA_ONLY, prefix)}, lora_path)
    with jittor_on("cpu"):
        for backend, model in backends(config()):
            model.load_weight(base_path).load_weight(lora_path)
            assert_holds(backend, model, BASE)


def test_lora_only_checkpoint_without_base_is_refused(tmp_path):
    lora_path = tmp_path / "lora_only.pt"
    torch.save({"model_state_dict": tensors(LORA_ONLY, "module.transformer.")}, lora_path)
    with jittor_on("cpu"):
        for backend, model in backends(config()):
            before = model.state_dict_numpy()
            with pytest.raises(CheckpointError) as info:
                model.load_weight(lora_path)
            message = str(info.value)
            assert str(lora_path) in message and "load a base checkpoint first" in message, backend
            assert_holds(backend, model, before)  # nothing loaded half-way


# ------------------------------------------------------------------------ our own formats
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("filename", ["model.pt", "model.bin", "model.safetensors", "model.npz"])
def test_save_checkpoint_round_trip(tmp_path, filename, device):
    path = save_checkpoint(tmp_path / filename, BASE)
    if filename.endswith((".pt", ".bin")):  # microsoft/LoRA's layout, as its DDP training writes
        raw = torch.load(path, map_location="cpu", weights_only=True)
        assert set(raw) == {"model_state_dict"}
        assert set(raw["model_state_dict"]) == {"module." + k for k in BASE}
    else:  # backend-neutral: canonical names
        assert set(read_checkpoint(path)) == set(BASE)
    with jittor_on(device):
        for backend, model in backends(config(), device):
            model.load_weight(path)
            assert_holds(backend, model, BASE)


def test_save_checkpoint_lora_only_round_trip(tmp_path):
    """What the training scripts write each save: LoRA weights only, read back onto a base."""
    base_path, _ = write_layout(tmp_path, "hf_safetensors")
    with jittor_on("cpu"):
        for backend, source in backends(config()):
            source.load_state_numpy(BASE)
            path = save_checkpoint(tmp_path / f"{backend}_lora.pt",
                                   source.state_dict_numpy(lora_only=True))
            assert set(read_checkpoint(path)) == {"module." + k for k in LORA_ONLY}
            for target_backend, target in backends(config()):
                target.load_weight(base_path).load_weight(path)
                assert_holds(f"{backend}->{target_backend}", target, BASE)


@pytest.mark.parametrize("device", DEVICES)
def test_jittor_pkl_round_trip(tmp_path, device):
    """Jittor's own `Module.save` (a pickle of Vars plus a checksum) loads into both backends."""
    path = str(tmp_path / "model.pkl")
    with jittor_on(device):
        source = backends(config())[1][1]
        source.load_state_numpy(BASE)
        source.save(path)
        for backend, model in backends(config(), device):
            model.load_weight(path)
            assert_holds(backend, model, BASE)


# -------------------------------------------------------------------------------- errors
def load_error(path, cfg=None, base_loaded=False):
    """The CheckpointError message both backends raise for `path` (they must agree)."""
    messages = []
    with jittor_on("cpu"):
        for backend, model in backends(cfg or config()):
            model.base_loaded = base_loaded
            before = model.state_dict_numpy()
            with pytest.raises(CheckpointError) as info:
                model.load_weight(path)
            assert_holds(backend, model, before)  # nothing loaded half-way
            messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert str(path) in messages[0], f"the message should name the file: {messages[0]}"
    return messages[0]


def test_missing_keys_are_listed(tmp_path):
    state = tensors(BASE)
    del state["h.1.mlp.c_fc.bias"], state["ln_f.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    message = load_error(tmp_path / "pytorch_model.bin")
    assert "missing keys (2)" in message
    assert "transformer.h.1.mlp.c_fc.bias" in message and "transformer.ln_f.weight" in message


def test_missing_lora_keys_are_listed(tmp_path):
    state = tensors(BASE, "module.transformer.")
    del state["module.transformer.h.1.attn.c_attn.lora_B"]
    torch.save({"model_state_dict": state}, tmp_path / "model.pt")
    message = load_error(tmp_path / "model.pt")
    assert "missing LoRA keys (1)" in message and "transformer.h.1.attn.c_attn.lora_B" in message


def test_unexpected_keys_are_listed(tmp_path):
    state = {**tensors(BASE_ONLY), "h.0.attn.q_proj.weight": torch.zeros(32, 32),
             "classifier.bias": torch.zeros(3)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    message = load_error(tmp_path / "pytorch_model.bin", config(lora_dim=0))
    assert "unexpected keys (2)" in message
    assert "transformer.h.0.attn.q_proj.weight" in message
    assert "transformer.classifier.bias" in message


def test_misshaped_keys_are_listed(tmp_path):
    other = GPT2Config(**{**CONFIG, "n_embd": 64}, lora_attn_dim=0)  # another model size
    torch.save(tensors(distinct_state(other)), tmp_path / "pytorch_model.bin")
    message = load_error(tmp_path / "pytorch_model.bin", config(lora_dim=0))
    assert "mis-shaped keys (found != expected)" in message
    assert "transformer.wte.weight (50257, 64) != (50257, 32)" in message
    assert "hint: base shapes differ" in message


def test_lora_checkpoint_into_model_without_lora_hints_lora_dim(tmp_path):
    torch.save({"model_state_dict": tensors(BASE, "module.transformer.")}, tmp_path / "model.pt")
    message = load_error(tmp_path / "model.pt", config(lora_dim=0))
    assert "transformer.h.0.attn.c_attn.lora_A" in message
    assert "hint: the checkpoint holds LoRA weights but the model has lora_dim 0" in message
    assert "--lora_dim" in message


def test_lora_checkpoint_of_another_rank_hints_lora_dim(tmp_path):
    rank_4 = tensors(distinct_state(config(lora_dim=4)), "module.transformer.")
    torch.save({"model_state_dict": rank_4}, tmp_path / "model.pt")
    message = load_error(tmp_path / "model.pt", config(lora_dim=LORA_DIM))
    assert "transformer.h.0.attn.c_attn.lora_A (8, 32) != (4, 32)" in message
    assert "hint: LoRA shapes differ: check --lora_dim" in message


def test_untied_lm_head_is_refused(tmp_path):
    head = torch.tensor(BASE["transformer.wte.weight"]) + 1.0
    torch.save({**tensors(BASE_ONLY, "transformer."), "lm_head.weight": head},
               tmp_path / "pytorch_model.bin")
    message = load_error(tmp_path / "pytorch_model.bin", config(lora_dim=0))
    assert "'lm_head.weight' differs from wte.weight" in message and "untied" in message


def test_no_gpt2_parameter_at_all(tmp_path):
    torch.save({"encoder.layer.0.weight": torch.zeros(2)}, tmp_path / "bert.bin")
    message = load_error(tmp_path / "bert.bin", config(lora_dim=0))
    assert "unexpected keys (1)" in message


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt", "model.safetensors",
                                      "model.npz", "model.pkl"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file(tmp_path, filename, damage):
    path = tmp_path / filename
    if damage == "garbage":
        path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    else:  # a real checkpoint of that format, cut short as by a crash during a copy
        if filename.endswith(".pkl"):
            with jittor_on("cpu"):
                model = backends(config())[1][1]
                model.save(str(path))
        else:
            save_checkpoint(path, BASE)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    message = load_error(path)
    assert "cannot read checkpoint" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "pytorch_model.bin"
    with jittor_on("cpu"):
        for _, model in backends(config()):
            with pytest.raises(FileNotFoundError, match=str(path)):
                model.load_weight(str(path))


def test_pickle_with_code_is_refused(tmp_path):
    """A .pkl is read without running the code a pickle may carry."""
    path = tmp_path / "evil.pkl"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps({"wte.weight": Payload()}))
    message = load_error(path)
    assert "cannot read checkpoint" in message
    assert not os.path.exists(marker)


def test_jittor_pkl_reads_without_importing_jittor(tmp_path):
    """A torch-only process reads a Jittor .pkl as arrays; it does not import jittor itself
    (which would skip jittor_impl.runtime's offline switches)."""
    path = str(tmp_path / "model.pkl")
    with jittor_on("cpu"):
        source = backends(config())[1][1]
        source.load_state_numpy(BASE)
        source.save(path)
    code = ("import sys; from shared.model.checkpoint import read_checkpoint; "
            f"state = read_checkpoint({path!r}); "
            "assert 'jittor' not in sys.modules, 'jittor was imported'; "
            "print(len(state), type(state['transformer.wte.weight']).__name__)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(BASE)), "ndarray"]
