"""Pretrained folders as --init_checkpoint (shared/model/pretrained.py, shared/model/tf_checkpoint.py).

A transformers folder's config.json gives the model: tiny GPT-2s saved by real transformers with
another layer_norm_epsilon, attention scaling, activation spelling or shape load into both
backends (through backends.load_inference_model, the path of gpt2_beam/generate/chat) with
transformers' own logits. OpenAI's TF GPT-2 layout (a fixture TensorFlow wrote,
tests/fixtures/make_openai_tf_gpt2.py) loads with the same weights and logits as its Hugging Face
twin. What the twins cannot compute, and broken files, are refused in one line naming the file
and key.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignment.harness import jittor_forward, jittor_on
from shared.model.checkpoint import CheckpointError, load_for_model, read_checkpoint
from shared.model.pretrained import ConfigFileError, checkpoint_config
from shared.train.train_args import model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_DIR = os.path.join(ROOT, "tests", "fixtures", "openai_tf_gpt2")
TF_HF_DIR = os.path.join(ROOT, "tests", "fixtures", "openai_tf_gpt2_hf")
BASE = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
IDS = np.random.default_rng(3).integers(0, 64, size=(2, 12))

# transformers GPT2Config keys that change what the model computes, one variant each
VARIANTS = {
    "default": {},
    "layer_norm_epsilon": {"layer_norm_epsilon": 0.3},
    "scale_attn_weights": {"scale_attn_weights": False},
    "scale_attn_by_inverse_layer_idx": {"scale_attn_by_inverse_layer_idx": True},
    "reorder_and_upcast_attn": {"reorder_and_upcast_attn": True},
    "gelu_pytorch_tanh": {"activation_function": "gelu_pytorch_tanh"},
    "gelu_fast": {"activation_function": "gelu_fast"},
    "shapes": {"vocab_size": 80, "n_positions": 24, "n_embd": 24, "n_layer": 3, "n_head": 3},
}


def flags(path, **overrides):
    values = dict(init_checkpoint=path, lora_checkpoint=None, model_card="gpt2.sm", n_embd=None,
                  n_layer=None, n_head=None, lora_dim=0, lora_alpha=128, lora_dropout=0.0,
                  device="cpu", backend="torch")
    values.update(overrides)
    return argparse.Namespace(**values)


def backend_logits(path, ids=IDS):
    """{'torch', 'torch math', 'jittor': logits} of the model the scripts build for `path`."""
    from backends import load_inference_model
    out = {}
    model = load_inference_model(flags(path)).model
    with torch.no_grad():
        out["torch"] = model(torch.from_numpy(ids))[0].numpy()
        model.set_attention("math")
        out["torch math"] = model(torch.from_numpy(ids))[0].numpy()
    with jittor_on("cpu"):
        model = load_inference_model(flags(path, backend="jittor")).model
        out["jittor"] = jittor_forward(model, ids)[0]
    return out


def hf_folder(tmp_path, name, variant, weights="safetensors"):
    """A GPT-2 saved by transformers itself, and its eager logits on IDS."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(**{**BASE, **variant}, initializer_range=0.4,
                                     attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    torch.manual_seed(7)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # LayerNorms away from (1, 0), so their eps and placement matter
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    folder = tmp_path / name
    model.save_pretrained(folder)
    if weights == "bin":  # the older layout: pytorch_model.bin from the same state dict
        os.remove(folder / "model.safetensors")
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    model.config._attn_implementation = "eager"  # the path reorder_and_upcast_attn lives on
    ids = IDS % config.vocab_size
    with torch.no_grad():
        reference = model(torch.from_numpy(ids)).logits.numpy()
    return str(folder), reference


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_transformers_folder_gives_transformers_logits(tmp_path, name):
    folder, reference = hf_folder(tmp_path, name, VARIANTS[name])
    config = model_config(flags(folder))
    for key, value in VARIANTS[name].items():
        if key in config.to_dict():
            assert getattr(config, key) == value, key
    for backend, logits in backend_logits(folder, IDS % config.vocab_size).items():
        np.testing.assert_allclose(logits, reference, atol=3e-5, rtol=0, err_msg=backend)
    if name in ("layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"):
        # what the folder used to compute: the weights under default settings, silently
        from shared.model.config import GPT2Config
        from torch_impl.model import GPT2LMModel
        old = GPT2LMModel(GPT2Config(**BASE)).eval()
        old.load_weight(os.path.join(folder, "model.safetensors"))
        with torch.no_grad():
            stale = old(torch.from_numpy(IDS))[0].numpy()
        assert np.abs(stale - reference).max() > 1e-2  # the test sees the difference


def test_pytorch_model_bin_folder_and_file_inside(tmp_path):
    folder, reference = hf_folder(tmp_path, "bin", VARIANTS["scale_attn_by_inverse_layer_idx"],
                                  weights="bin")
    for path in (folder, os.path.join(folder, "pytorch_model.bin")):
        assert model_config(flags(path)).scale_attn_by_inverse_layer_idx
        config = model_config(flags(path))
        from torch_impl.model import GPT2LMModel
        model = GPT2LMModel(config).eval()
        model.load_weight(path)
        with torch.no_grad():
            np.testing.assert_allclose(model(torch.from_numpy(IDS))[0].numpy(), reference,
                                       atol=3e-5, rtol=0)


def test_sharded_folder_reads_every_shard(tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = tmp_path / "sharded"
    shutil.copytree(TF_HF_DIR, folder)
    arrays = load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    names = sorted(arrays)
    weight_map = {}
    for index, part in enumerate((names[::2], names[1::2])):
        shard = f"model-0000{index + 1}-of-00002.safetensors"
        save_file({k: arrays[k] for k in part}, str(folder / shard))
        weight_map.update({k: shard for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = model_config(flags(str(folder)))
    sharded = load_for_model(str(folder), config)
    whole = load_for_model(TF_HF_DIR, config)
    assert sorted(sharded) == sorted(whole)
    for key in whole:
        np.testing.assert_array_equal(sharded[key], whole[key])


# ------------------------------------------------------------------------ flags vs the config
def test_shape_flags_agree_or_are_refused_naming_both_values():
    config = model_config(flags(TF_HF_DIR, n_embd=16, n_layer=2, model_card="gpt2.lg"))
    assert (config.n_embd, config.n_layer, config.n_head, config.vocab_size) == (16, 2, 2, 96)
    with pytest.raises(ConfigFileError, match=r"--n_layer 12 contradicts n_layer = 2 in "
                                              r".*openai_tf_gpt2_hf/config.json"):
        model_config(flags(TF_HF_DIR, n_layer=12))
    with pytest.raises(ConfigFileError, match=r"--n_head 4 contradicts n_head = 2 in "
                                              r".*openai_tf_gpt2/hparams.json"):
        model_config(flags(TF_DIR, n_head=4))


def test_a_plain_checkpoint_file_keeps_the_flags(tmp_path):
    from shared.model.checkpoint import save_checkpoint
    state = load_for_model(TF_HF_DIR, model_config(flags(TF_HF_DIR)))
    path = save_checkpoint(tmp_path / "plain.safetensors", state)
    assert checkpoint_config(path) is None
    assert model_config(flags(path, n_embd=16, n_layer=2, n_head=2)).vocab_size == 50257


# ----------------------------------------------------------------- OpenAI's TF checkpoints
@pytest.mark.parametrize("path", ["", "model.ckpt", "model.ckpt.index",
                                  "model.ckpt.data-00000-of-00001"])
def test_openai_tf_checkpoint_loads_as_its_hf_twin(path):
    target = os.path.join(TF_DIR, path) if path else TF_DIR
    config = model_config(flags(target))
    assert config == model_config(flags(TF_HF_DIR))
    tf_state, hf_state = load_for_model(target, config), load_for_model(TF_HF_DIR, config)
    assert sorted(tf_state) == sorted(hf_state)
    for key in hf_state:
        np.testing.assert_array_equal(tf_state[key], hf_state[key], err_msg=key)


def test_openai_tf_checkpoint_logits_in_both_backends():
    ids = IDS % 96
    tf_logits, hf_logits = backend_logits(TF_DIR, ids), backend_logits(TF_HF_DIR, ids)
    for backend in tf_logits:
        np.testing.assert_array_equal(tf_logits[backend], hf_logits[backend], err_msg=backend)
    np.testing.assert_allclose(tf_logits["jittor"], tf_logits["torch"], atol=1e-5, rtol=0)
    transformers = pytest.importorskip("transformers")
    reference = transformers.GPT2LMHeadModel.from_pretrained(TF_HF_DIR).eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(tf_logits["torch"], expected, atol=3e-5, rtol=0)


def test_tf_optimizer_slots_are_dropped(monkeypatch):
    from shared.model import pretrained, tf_checkpoint
    real = tf_checkpoint.read_tf_checkpoint(os.path.join(TF_DIR, "model.ckpt"))
    extra = dict(real, **{"model/wte/Adam": real["model/wte"], "model/wte/Adam_1": real["model/wte"],
                          "global_step": np.int64(3), "beta1_power": np.float32(0.9)})
    monkeypatch.setattr(tf_checkpoint, "read_tf_checkpoint", lambda prefix: extra)
    assert len(pretrained.read_openai_tf(TF_DIR)) == len(real)
    config = model_config(flags(TF_DIR))
    assert sorted(load_for_model(TF_DIR, config)) == sorted(load_for_model(TF_HF_DIR, config))


# -------------------------------------------------------------------------- refused configs
def hf_copy(tmp_path, **changes):
    """The fixture's HF twin with config.json changed (value None: key removed)."""
    folder = tmp_path / "hf"
    shutil.copytree(TF_HF_DIR, folder)
    data = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    return str(folder)


REFUSED = [  # (key, value, what the message says)
    ("activation_function", "relu", "activation_function = \"relu\" cannot be loaded: the twins "
                                    "implement GPT-2's tanh GELU only"),
    ("activation_function", "gelu", "activation_function = \"gelu\" cannot be loaded"),
    ("n_inner", 48, "n_inner = 48 cannot be loaded: the twins' MLP is 4 * n_embd = 64 wide"),
    ("add_cross_attention", True, "add_cross_attention = true cannot be loaded"),
    ("tie_word_embeddings", False, "tie_word_embeddings = false cannot be loaded"),
    ("model_type", "gpt_neo", "model_type = \"gpt_neo\" cannot be loaded"),
    ("n_head", 3, "n_head = 3 cannot be loaded: n_embd = 16 is not divisible by it"),
]


@pytest.mark.parametrize("key,value,message", REFUSED, ids=[f"{k}={v}" for k, v, _ in REFUSED])
def test_refused_config_values_name_file_key_and_value(tmp_path, key, value, message):
    folder = hf_copy(tmp_path, **{key: value})
    with pytest.raises(ConfigFileError) as info:
        model_config(flags(folder))
    assert str(info.value) == f"{folder}/config.json: {message}" or \
        str(info.value).startswith(f"{folder}/config.json: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["model_type", "vocab_size", "n_positions", "n_embd", "n_layer",
                                 "n_head"])
def test_missing_config_key(tmp_path, key):
    folder = hf_copy(tmp_path, **{key: None})
    with pytest.raises(ConfigFileError, match=f"^{folder}/config.json: missing key '{key}'$"):
        model_config(flags(folder))


@pytest.mark.parametrize("key,value,wanted", [
    ("n_embd", "16", "a positive integer"), ("n_layer", 2.0, "a positive integer"),
    ("vocab_size", 0, "a positive integer"), ("n_head", True, "a positive integer"),
    ("layer_norm_epsilon", "1e-5", "a positive number"),
    ("scale_attn_weights", "false", "true or false"),
    ("reorder_and_upcast_attn", 1, "true or false"),
    ("activation_function", 1, "a string"),
])
def test_wrong_typed_config_key(tmp_path, key, value, wanted):
    folder = hf_copy(tmp_path, **{key: value})
    with pytest.raises(ConfigFileError) as info:
        model_config(flags(folder))
    assert str(info.value) == (f"{folder}/config.json: key '{key}' is {json.dumps(value)}, "
                               f"expected {wanted}")


def test_config_that_is_not_json(tmp_path):
    folder = hf_copy(tmp_path)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write('{\n  "n_embd": 16,\n  oops\n}')
    with pytest.raises(ConfigFileError, match=r"config.json:3:3: invalid JSON"):
        model_config(flags(folder))


# ----------------------------------------------------------------------- broken TF folders
def tf_copy(tmp_path):
    folder = tmp_path / "tf"
    shutil.copytree(TF_DIR, folder)
    return folder


def test_missing_hparams_json(tmp_path):
    folder = tf_copy(tmp_path)
    os.remove(folder / "hparams.json")
    with pytest.raises(ConfigFileError, match=f"^{folder}/hparams.json: not found"):
        model_config(flags(str(folder)))


@pytest.mark.parametrize("change,message", [
    ({"n_vocab": None}, "missing key 'n_vocab'"),
    ({"n_ctx": "1024"}, "key 'n_ctx' is \"1024\", expected a positive integer"),
])
def test_bad_hparams_json(tmp_path, change, message):
    folder = tf_copy(tmp_path)
    data = json.loads((folder / "hparams.json").read_text())
    for key, value in change.items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    (folder / "hparams.json").write_text(json.dumps(data))
    with pytest.raises(ConfigFileError, match=f"^{folder}/hparams.json: {message}$"):
        model_config(flags(str(folder)))


def test_truncated_tf_data_file(tmp_path):
    folder = tf_copy(tmp_path)
    data = folder / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-100])
    config = model_config(flags(str(folder)))
    with pytest.raises(CheckpointError, match=rf"^{data}: tensor 'model/wte' needs bytes "
                                              rf"\d+..34560 but the file has 34460: truncated$"):
        load_for_model(str(folder), config)


def test_damaged_tf_data_file(tmp_path):
    folder = tf_copy(tmp_path)
    data = folder / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"^{data}: tensor '.*' fails its CRC32C: damaged$"):
        load_for_model(str(folder), model_config(flags(str(folder))))


@pytest.mark.parametrize("cut", [10, 200])
def test_truncated_tf_index(tmp_path, cut):
    folder = tf_copy(tmp_path)
    index = folder / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-cut])
    with pytest.raises(CheckpointError, match=rf"^{index}: .*truncated"):
        load_for_model(str(folder), model_config(flags(str(folder))))


# ------------------------------------------------------------------------------- scripts
def run_script(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_scripts_refuse_a_bad_config_in_one_line_exit_2(tmp_path):
    folder = hf_copy(tmp_path, activation_function="relu")
    out = run_script("scripts/export_hf.py", "export", "--init_checkpoint", folder,
                     "--hf_dir", str(tmp_path / "out"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"error: {folder}/config.json: activation_function = \"relu\" "
                                  f"cannot be loaded: the twins implement GPT-2's tanh GELU only "
                                  f"(gelu_new, gelu_pytorch_tanh, gelu_fast)")
    for name in ("train.jsonl", "valid.jsonl"):
        (tmp_path / name).write_text("")
    out = run_script("scripts/gpt2_ft.py", "--backend", "torch", "--device", "cpu",
                     "--train_data", str(tmp_path / "train.jsonl"), "--valid_data",
                     str(tmp_path / "valid.jsonl"), "--init_checkpoint", folder, "--max_step", "1",
                     "--work_dir", str(tmp_path / "work"))
    assert out.returncode == 2, out.stderr
    assert f"{folder}/config.json: activation_function = \"relu\" cannot be loaded" in out.stderr


def test_export_hf_of_a_tf_checkpoint_is_its_hf_twin(tmp_path):
    out = run_script("scripts/export_hf.py", "export", "--init_checkpoint", TF_DIR,
                     "--hf_dir", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    config = model_config(flags(str(tmp_path / "hf")))
    assert config == model_config(flags(TF_HF_DIR))
    exported, twin = read_checkpoint(str(tmp_path / "hf")), read_checkpoint(TF_HF_DIR)
    assert sorted(exported) == sorted(twin)
    for key in twin:
        np.testing.assert_array_equal(exported[key], twin[key])


def test_pretrain_from_a_folder_trains_its_model_and_writes_its_config(tmp_path):
    """pretrain.py (work.sh --task pretrain) from a folder whose config says
    scale_attn_weights false: the run's checkpoints are read back as that model."""
    from shared.model.config import GPT2Config
    from shared.model.hf_export import export_hf_model
    from shared.model.params import init_state_dict
    config = GPT2Config(n_positions=32, n_ctx=32, n_embd=16, n_layer=1, n_head=2,
                        scale_attn_weights=False, layer_norm_epsilon=1e-3)
    folder = tmp_path / "pretrained"
    export_hf_model(init_state_dict(config, seed=1), config, folder)
    text = tmp_path / "text.txt"
    text.write_text("Every effort moves you, said the painter, and the sketch grew. " * 40)
    common = ["scripts/pretrain.py", "--backend", "torch", "--device", "cpu", "--text", str(text),
              "--seq_len", "16", "--max_step", "2", "--sample_tokens", "2", "--no_progress",
              "--init_checkpoint", str(folder)]
    out = run_script(*common, "--n_layer", "4", "--work_dir", str(tmp_path / "refused"))
    assert out.returncode == 2
    assert f"--n_layer 4 contradicts n_layer = 1 in {folder}/config.json" in out.stderr
    work = tmp_path / "work"
    out = run_script(*common, "--work_dir", str(work))
    assert out.returncode == 0, out.stderr
    saved = json.loads((work / "config.json").read_text())
    assert (saved["scale_attn_weights"], saved["layer_norm_epsilon"], saved["n_layer"]) == \
        (False, 1e-3, 1)
    trained = model_config(flags(str(work / "model.2.pt")))
    assert trained == GPT2Config(**dict(config.to_dict()))
    # the folder reused for a run from scratch (its checkpoints cleared): the earlier run's
    # config.json does not describe the new checkpoints
    for old in work.iterdir():
        if old.name != "config.json":
            old.unlink() if old.is_file() else shutil.rmtree(old)
    scratch = [a for a in common if a not in ("--init_checkpoint", str(folder))]
    out = run_script(*scratch, "--n_embd", "16", "--n_layer", "2", "--n_head", "2",
                     "--work_dir", str(work))
    assert out.returncode == 0, out.stderr
    assert not (work / "config.json").exists()


def test_e2e_and_instruct_pipelines_take_the_folder_config(tmp_path):
    """The pipelines convert --init_checkpoint to base/base.safetensors for their later stages:
    the folder's config comes along beside it."""
    from shared.pipeline.engine import Pipeline
    fake = argparse.Namespace(args=argparse.Namespace(init_checkpoint=TF_DIR),
                              s=dict(model_card="gpt2.sm", n_embd=None, n_layer=None, n_head=None,
                                     lora_dim=0, lora_alpha=32))
    config = Pipeline.model_config(fake)
    assert config == model_config(flags(TF_DIR, lora_alpha=32))
    base = tmp_path / "base" / "base.safetensors"
    Pipeline.save_base(fake, str(base), config)
    assert model_config(flags(str(base))) == model_config(flags(TF_DIR))
    fake.s["n_embd"] = 32
    with pytest.raises(ConfigFileError, match="--n_embd 32 contradicts n_embd = 16"):
        Pipeline.model_config(fake)
