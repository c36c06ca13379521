"""Checkpoints carry the LoRA settings they were trained with (shared/model/lora_settings.py), every
reader takes them when --lora_dim/--lora_alpha are left out and refuses a flag that disagrees;
peft adapters import exactly (rank_pattern, alpha_pattern, layers_to_transform, fractional
alpha) or are refused naming the adapter_config.json key; with peft installed, peft's own
PeftModel computes the imported adapter's logits in both backends."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignment.harness import jittor_on, randomize_lora_B
from shared.model.checkpoint import (CheckpointError, load_for_model, read_checkpoint,
                                     save_checkpoint)
from shared.model.config import GPT2Config
from shared.model.hf_export import (HFFormatError, export_hf_model, export_peft_adapter,
                                    import_peft_adapter, lora_to_peft, peft_adapter_config,
                                    peft_to_lora)
from shared.model.lora_settings import (LORA_TARGETS, LoRASettingsError, read_lora_settings,
                                        resolve_lora_args, settings_from_config)
from shared.model.params import init_state_dict, is_lora_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(n_embd=32, n_layer=3, n_head=4)
SHAPE_FLAGS = ["--n_embd", "32", "--n_layer", "3", "--n_head", "4"]
CONFIG = GPT2Config(**SHAPE, lora_attn_dim=4, lora_attn_alpha=32, lora_dropout=0.1)
BASE = GPT2Config(**SHAPE)
IDS = np.random.default_rng(0).integers(0, 50257, size=(2, 9))
E = SHAPE["n_embd"]


@pytest.fixture(scope="module")
def state():
    return randomize_lora_B(init_state_dict(CONFIG, seed=3), seed=3, std=0.2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, state):
    """base.safetensors (no LoRA), lora.pt (LoRA only, trained with r=4, alpha 32) and the
    same LoRA weights as a microsoft/LoRA file without settings."""
    folder = tmp_path_factory.mktemp("ckpt")
    base = save_checkpoint(folder / "base.safetensors",
                           {k: v for k, v in state.items() if not is_lora_name(k)},
                           lora_settings=settings_from_config(CONFIG))
    lora = {k: v for k, v in state.items() if is_lora_name(k)}
    return {"base": base, "lora": save_checkpoint(folder / "lora.pt", lora,
                                                  lora_settings=settings_from_config(CONFIG)),
            "plain": save_checkpoint(folder / "plain.pt", lora)}


def torch_logits(config, *sources):
    from torch_impl.model import GPT2LMModel
    model = GPT2LMModel(config).eval()
    for source in sources:
        model.load_weight(source)
    with torch.no_grad():
        return model(torch.from_numpy(IDS))[0].numpy()


def jittor_logits(config, *sources):
    with jittor_on("cpu") as jt:
        from jittor_impl.model import GPT2LMModel
        model = GPT2LMModel(config)
        for source in sources:
            model.load_weight(source)
        model.eval()
        with jt.no_grad():
            return model(jt.array(IDS))[0].numpy()


def run_script(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


# ------------------------------------------------------------------------------- the record
@pytest.mark.parametrize("filename", ["lora.pt", "lora.safetensors", "lora.npz"])
def test_each_format_stores_the_settings_beside_the_weights(tmp_path, state, filename):
    config = GPT2Config(**SHAPE, lora_attn_dim=4, lora_attn_alpha=2.5, lora_dropout=0.1)
    path = save_checkpoint(tmp_path / filename, state, lora_settings=settings_from_config(config))
    assert read_lora_settings(path) == {"lora_dim": 4, "lora_alpha": 2.5,
                                        "lora_targets": LORA_TARGETS, "lora_dropout": 0.1}
    weights = read_checkpoint(path)  # the record is no weight
    assert sorted(k.replace("module.", "") for k in weights) == sorted(state)
    if filename.endswith(".pt"):  # microsoft/LoRA's load_weight reads model_state_dict only
        raw = torch.load(path, weights_only=True)
        assert sorted(raw) == ["lora_config", "model_state_dict"]
        assert all(k.startswith("module.transformer.") for k in raw["model_state_dict"])
    name = "transformer.h.0.attn.c_attn.lora_B"
    np.testing.assert_array_equal(load_for_model(path, config)[name], state[name])


def test_a_base_checkpoint_carries_no_lora_settings(saved):
    assert read_lora_settings(saved["base"]) is None
    assert read_lora_settings(saved["plain"]) is None


def test_a_damaged_record_is_named(tmp_path, state):
    from safetensors.numpy import save_file
    path = tmp_path / "bad.safetensors"
    save_file(dict(state), str(path), metadata={"lora_config": '{"lora_dim": 4}'})
    with pytest.raises(LoRASettingsError,
                       match=r"bad.safetensors: lora_config has no 'lora_alpha'"):
        read_lora_settings(path)
    save_file(dict(state), str(path), metadata={"lora_config": json.dumps(
        {"lora_dim": 4, "lora_alpha": 8, "lora_targets": ["c_attn.query", "c_proj"]})})
    with pytest.raises(LoRASettingsError, match="'lora_targets'"):
        read_lora_settings(path)


def test_loading_into_a_model_of_other_settings_is_refused(saved):
    for wrong, message in ((dict(lora_attn_alpha=8), "the model has lora_alpha 8, but .*lora.pt "
                                                      "was trained with lora_alpha 32"),
                           (dict(lora_attn_dim=2), "the model has lora_dim 2, but .*lora.pt was "
                                                   "trained with lora_dim 4")):
        config = GPT2Config(**dict(CONFIG.to_dict(), **wrong))
        with pytest.raises(CheckpointError, match=message):
            load_for_model(saved["lora"], config, base_loaded=True)
    # a microsoft/LoRA file says nothing: the model's settings are used, as before
    config = GPT2Config(**dict(CONFIG.to_dict(), lora_attn_alpha=8))
    assert len(load_for_model(saved["plain"], config, base_loaded=True)) == 2 * CONFIG.n_layer


def namespace(**kw):
    values = dict(init_checkpoint=None, lora_checkpoint=None, lora_dim=None, lora_alpha=None)
    return argparse.Namespace(**dict(values, **kw))


def test_flags_left_out_come_from_the_checkpoint(saved):
    args = resolve_lora_args(namespace(init_checkpoint=saved["base"],
                                       lora_checkpoint=saved["lora"]))
    assert (args.lora_dim, args.lora_alpha) == (4, 32.0)
    args = resolve_lora_args(namespace(lora_checkpoint=saved["lora"], lora_alpha=32.0))
    assert (args.lora_dim, args.lora_alpha) == (4, 32.0)
    with pytest.raises(LoRASettingsError, match=r"--lora_alpha 8 given, but .*lora.pt was trained "
                                                r"with lora_alpha 32 .*leave --lora_alpha out"):
        resolve_lora_args(namespace(lora_checkpoint=saved["lora"], lora_alpha=8.0))
    with pytest.raises(LoRASettingsError, match="--lora_dim 8 given, but .*lora_dim 4"):
        resolve_lora_args(namespace(lora_checkpoint=saved["lora"], lora_dim=8))
    # a file without settings: the flags, else the defaults, as before
    args = resolve_lora_args(namespace(lora_checkpoint=saved["plain"], lora_dim=4, lora_alpha=8.0))
    assert (args.lora_dim, args.lora_alpha) == (4, 8.0)
    args = resolve_lora_args(namespace(init_checkpoint=saved["base"]))
    assert (args.lora_dim, args.lora_alpha) == (0, 128.0)


def test_two_checkpoints_with_different_settings_are_refused(tmp_path, state):
    other = GPT2Config(**dict(CONFIG.to_dict(), lora_attn_alpha=16))
    a = save_checkpoint(tmp_path / "a.pt", state, lora_settings=settings_from_config(CONFIG))
    b = save_checkpoint(tmp_path / "b.pt", state, lora_settings=settings_from_config(other))
    with pytest.raises(LoRASettingsError, match=r"a.pt and .*b.pt carry different LoRA settings "
                                                r"\(lora_alpha 32.0 vs 16.0\)"):
        resolve_lora_args(namespace(init_checkpoint=a, lora_checkpoint=b))


def test_fractional_alpha_from_the_command_line():
    from shared.train.train_args import build_parser, model_config
    args = build_parser(data_args=False).parse_args(
        ["--backend", "torch", *SHAPE_FLAGS, "--lora_dim", "4", "--lora_alpha", "2.5"])
    config = model_config(args)
    assert config.lora_attn_alpha == 2.5
    from torch_impl.model import GPT2LMModel
    assert GPT2LMModel(config).transformer.h[0].attn.c_attn.scaling == 0.625


# ------------------------------------------------------------------------ writers, readers
def test_training_stores_the_settings_and_resume_takes_them(tmp_path, encoded):
    from backends import training_backend
    from shared.train.train_args import build_parser
    from shared.train.trainer import train
    work = tmp_path / "run"
    argv = ["--backend", "torch", "--device", "cpu", "--train_data", str(encoded / "train.jsonl"),
            "--valid_data", str(encoded / "valid.jsonl"), *SHAPE_FLAGS, "--lora_dim", "2",
            "--lora_alpha", "2.5", "--lora_dropout", "0.1", "--train_batch_size", "2",
            "--valid_batch_size", "4", "--seq_len", "32", "--max_step", "4", "--save_interval",
            "2", "--eval_interval", "100", "--max_eval_batches", "1", "--lr", "0.01",
            "--work_dir", str(work), "--no_progress"]
    train(build_parser().parse_args(argv), training_backend("torch"))
    expected = {"lora_dim": 2, "lora_alpha": 2.5, "lora_targets": LORA_TARGETS,
                "lora_dropout": 0.1}
    assert read_lora_settings(work / "model.2.pt") == expected  # LoRA only
    assert read_lora_settings(work / "model.4.pt") == expected  # all weights
    with open(work / "run_config.json") as f:
        assert json.load(f)["lora_alpha"] == 2.5
    args = resolve_lora_args(namespace(resume=True, work_dir=str(work)))
    assert (args.lora_dim, args.lora_alpha) == (2, 2.5)


def test_scripts_take_the_settings_and_refuse_a_wrong_flag(tmp_path, state, saved, encoded):
    """export_hf (the issue's case: alpha 8 given for a run trained with 32), generate,
    diff_layers: a wrong flag is an error naming both values and the file; none given, the
    checkpoint's settings are used."""
    ckpt = save_checkpoint(tmp_path / "model.6.pt", state,
                           lora_settings=settings_from_config(CONFIG))
    export = [os.path.join("scripts", "export_hf.py"), "export", "--init_checkpoint", ckpt,
              *SHAPE_FLAGS, "--peft_dir", str(tmp_path / "peft")]
    out = run_script(*export, "--lora_alpha", "8")
    assert out.returncode == 2
    assert f"--lora_alpha 8 given, but {ckpt} was trained with lora_alpha 32" in out.stderr
    assert not os.path.exists(tmp_path / "peft")
    out = run_script(*export)
    assert out.returncode == 0, out.stderr
    with open(tmp_path / "peft" / "adapter_config.json") as f:
        adapter = json.load(f)
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 64.0)
    out = run_script(os.path.join("scripts", "generate.py"), "--backend", "torch", "--device",
                     "cpu", "--init_checkpoint", saved["base"], "--lora_checkpoint", saved["lora"],
                     *SHAPE_FLAGS, "--lora_alpha", "8", "--prompt", "x")
    assert out.returncode == 2
    assert f"--lora_alpha 8 given, but {saved['lora']} was trained with lora_alpha 32" in out.stderr
    out = run_script(os.path.join("scripts", "diff_layers.py"), "--init_checkpoint", ckpt,
                     *SHAPE_FLAGS, "--lora_alpha", "8", "--data", str(encoded / "valid.jsonl"),
                     "--out", str(tmp_path / "diff"), "--device", "cpu")
    assert out.returncode == 2
    assert "--lora_alpha 8 given, but" in out.stderr and "lora_alpha 32" in out.stderr


# ------------------------------------------------------------------------------ peft import
def dense_adapter(layers, ranks, seed=1):
    """peft-format c_attn LoRA weights (fan_in_fan_out, key rows of lora_B zero) for `layers`."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in layers:
        key = f"base_model.model.transformer.h.{i}.attn.c_attn.lora_"
        b = rng.normal(0, 0.3, size=(3 * E, ranks[i])).astype(np.float32)
        b[E:2 * E] = 0
        arrays[key + "A.weight"] = rng.normal(0, 0.3, size=(ranks[i], E)).astype(np.float32)
        arrays[key + "B.weight"] = b
    return arrays


def write_adapter(folder, adapter_config, arrays):
    from safetensors.numpy import save_file
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f)
    save_file(arrays, os.path.join(folder, "adapter_model.safetensors"))
    return folder


# r=4, lora_alpha=5 (scale 1.25); layer 2 at rank 2, alpha 7 (scale 3.5); layer 1 left out.
PATTERNED = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 5,
             "target_modules": ["c_attn"], "fan_in_fan_out": True, "bias": "none",
             "layers_to_transform": [0, 2], "rank_pattern": {"h.2.attn.c_attn": 2},
             "alpha_pattern": {"transformer.h.2.attn.c_attn": 7}, "use_rslora": False,
             "use_dora": False, "modules_to_save": None, "lora_dropout": 0.05}
SCALES = {0: 5 / 4, 2: 7 / 2}


def merged_reference(base_state, arrays, scales):
    """Base weights with peft's delta (lora_B @ lora_A).T * scale added to c_attn, by hand."""
    out = dict(base_state)
    for i, scale in scales.items():
        key = f"base_model.model.transformer.h.{i}.attn.c_attn.lora_"
        delta = (arrays[key + "B.weight"].astype(np.float64)
                 @ arrays[key + "A.weight"].astype(np.float64)).T * scale
        name = f"transformer.h.{i}.attn.c_attn.weight"
        out[name] = (out[name].astype(np.float64) + delta).astype(np.float32)
    return out


def test_patterns_and_layers_to_transform_import_exactly(tmp_path):
    base = init_state_dict(BASE, seed=4)
    arrays = dense_adapter([0, 2], {0: 4, 2: 2})
    folder = write_adapter(tmp_path / "adapter", PATTERNED, arrays)
    out = run_script(os.path.join("scripts", "export_hf.py"), "import", "--peft_dir", str(folder),
                     *SHAPE_FLAGS, "--out", str(tmp_path / "lora.pt"))
    assert out.returncode == 0, out.stderr
    settings = read_lora_settings(tmp_path / "lora.pt")
    assert settings == {"lora_dim": 4, "lora_alpha": 5.0, "lora_targets": LORA_TARGETS,
                        "lora_layer_dims": [4, 0, 2], "lora_layer_alphas": [5.0, 5.0, 7.0]}
    base_path = save_checkpoint(tmp_path / "base.safetensors", base)
    args = resolve_lora_args(namespace(init_checkpoint=base_path,
                                       lora_checkpoint=str(tmp_path / "lora.pt")))
    from shared.train.train_args import model_config
    args.model_card, args.n_embd, args.n_layer, args.n_head = "gpt2.sm", 32, 3, 4
    config = model_config(args)
    assert [config.lora_dim_of(i) for i in range(3)] == [4, 0, 2]
    expected = torch_logits(BASE, merged_reference(base, arrays, SCALES))
    ours = torch_logits(config, base_path, str(tmp_path / "lora.pt"))
    assert np.abs(ours - torch_logits(BASE, base)).max() > 1e-2  # the adapter does something
    np.testing.assert_allclose(ours, expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(jittor_logits(config, base_path, str(tmp_path / "lora.pt")),
                               expected, atol=2e-5, rtol=0)
    # the same alpha as an integer flag (the old way) is off; the stored one is exact
    off = GPT2Config(**dict(config.to_dict(), lora_layer_alphas=(4.0, 4.0, 7.0)))
    with pytest.raises(CheckpointError, match="lora_layer_alphas"):
        torch_logits(off, base_path, str(tmp_path / "lora.pt"))


def test_per_layer_settings_export_to_peft_and_back_bit_exact(tmp_path):
    config = GPT2Config(**SHAPE, lora_attn_dim=4, lora_attn_alpha=2.5,
                        lora_layer_dims=(4, 0, 2), lora_layer_alphas=(2.5, 2.5, 6.0))
    state = randomize_lora_B(init_state_dict(config, seed=2), seed=2, std=0.2)
    export_peft_adapter(state, config, tmp_path / "adapter")
    with open(tmp_path / "adapter" / "adapter_config.json") as f:
        adapter = json.load(f)
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 5.0)
    assert adapter["rank_pattern"] == {"transformer.h.2.attn.c_attn": 4}
    assert adapter["alpha_pattern"] == {"transformer.h.2.attn.c_attn": 12.0}
    assert adapter["layers_to_transform"] == [0, 2]
    back, settings = import_peft_adapter(tmp_path / "adapter", BASE)
    assert settings == {k: v for k, v in settings_from_config(config).items()
                        if k != "lora_dropout"}  # dropout does not travel in peft's format
    assert sorted(back) == sorted(k for k in state if is_lora_name(k))
    for name, value in back.items():
        np.testing.assert_array_equal(value, state[name])


@pytest.mark.parametrize("change, key", [
    ({"use_rslora": True}, "use_rslora"),
    ({"use_dora": True}, "use_dora"),
    ({"fan_in_fan_out": False}, "fan_in_fan_out"),
    ({"bias": "lora_only"}, "bias"),
    ({"target_modules": ["c_attn", "c_proj"]}, "target_modules"),
    ({"target_modules": ".*c_proj"}, "target_modules"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"layers_pattern": "layers"}, "layers_pattern"),
    ({"layers_to_transform": [0, 7]}, "layers_to_transform"),
    ({"layer_replication": [[0, 2]]}, "layer_replication"),
    ({"some_future_option": {"on": True}}, "some_future_option"),
    ({"peft_type": "IA3"}, "peft_type"),
])
def test_what_the_twins_cannot_express_is_refused_naming_the_key(change, key):
    arrays = dense_adapter([0, 2], {0: 4, 2: 2})
    with pytest.raises(HFFormatError, match=f"adapter_config.json: '{key}' = "):
        peft_to_lora(arrays, dict(PATTERNED, **change), BASE, source="adapter_model.safetensors",
                     config_source="adapter_config.json")


def test_weights_outside_the_targeted_layers_are_refused():
    arrays = dense_adapter([0, 1, 2], {0: 4, 1: 4, 2: 2})
    with pytest.raises(HFFormatError, match="weights for layer 1, which the adapter config does "
                                            "not target"):
        peft_to_lora(arrays, PATTERNED, BASE)
    with pytest.raises(HFFormatError, match="layer 2: lora_A .* do not fit r=4"):
        peft_to_lora(dense_adapter([0, 2], {0: 4, 2: 2}), dict(PATTERNED, rank_pattern={}), BASE)


def test_import_refuses_lora_flags(tmp_path):
    folder = write_adapter(tmp_path / "adapter", PATTERNED, dense_adapter([0, 2], {0: 4, 2: 2}))
    out = run_script(os.path.join("scripts", "export_hf.py"), "import", "--peft_dir", str(folder),
                     *SHAPE_FLAGS, "--lora_alpha", "2", "--out", str(tmp_path / "lora.pt"))
    assert out.returncode == 2 and "--lora_alpha is not used" in out.stderr
    assert not os.path.exists(tmp_path / "lora.pt")


# --------------------------------------------------------------------------- with real peft
def test_peft_computes_what_the_imported_adapter_computes(tmp_path):
    """A peft adapter made by peft itself (rank_pattern, alpha_pattern, layers_to_transform,
    r=4 lora_alpha=5) on a transformers GPT-2 built from a config: PeftModel's logits equal our
    logits, torch and Jittor, after `export_hf.py import`."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    base = init_state_dict(BASE, seed=6)
    export_hf_model(base, BASE, tmp_path / "base")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "base")).eval()
    lora_config = peft.LoraConfig(
        r=4, lora_alpha=5, target_modules=["c_attn"], fan_in_fan_out=True,
        layers_to_transform=[0, 2], rank_pattern={"h.2.attn.c_attn": 2},
        alpha_pattern={"h.2.attn.c_attn": 7}, lora_dropout=0.0)
    model = peft.get_peft_model(hf, lora_config).eval()
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                value = torch.from_numpy(rng.normal(0, 0.3, size=tuple(p.shape)).astype(np.float32))
                if "lora_B" in name:
                    value[E:2 * E] = 0  # no key update: expressible by a q/v MergedLinear
                p.copy_(value)
    model.save_pretrained(str(tmp_path / "adapter"))
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(IDS)).logits.numpy()
    out = run_script(os.path.join("scripts", "export_hf.py"), "import", "--peft_dir",
                     str(tmp_path / "adapter"), *SHAPE_FLAGS, "--out", str(tmp_path / "lora.pt"))
    assert out.returncode == 0, out.stderr
    settings = read_lora_settings(tmp_path / "lora.pt")
    assert settings["lora_layer_dims"] == [4, 0, 2]
    assert settings["lora_layer_alphas"] == [5.0, 5.0, 7.0]
    base_path = save_checkpoint(tmp_path / "base.safetensors", base)
    config = GPT2Config(**SHAPE, lora_attn_dim=4, lora_attn_alpha=5.0,
                        lora_layer_dims=(4, 0, 2), lora_layer_alphas=(5.0, 5.0, 7.0))
    assert np.abs(expected - torch_logits(BASE, base)).max() > 1e-2
    for logits in (torch_logits(config, base_path, str(tmp_path / "lora.pt")),
                   jittor_logits(config, base_path, str(tmp_path / "lora.pt"))):
        np.testing.assert_allclose(logits, expected, atol=2e-5, rtol=0)
    # and back: our export of these weights loads in peft and gives the same logits
    state = dict(load_for_model(base_path, config))
    state.update(load_for_model(str(tmp_path / "lora.pt"), config, base_loaded=True))
    export_peft_adapter(state, config, tmp_path / "again")
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "base")).eval()
    again = peft.PeftModel.from_pretrained(hf2, str(tmp_path / "again")).eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(input_ids=torch.from_numpy(IDS)).logits.numpy(),
                                   expected, atol=2e-5, rtol=0)
