"""The scripts users run on a --peft checkpoint, through their command lines: generate.py samples
alike in both backends, chat.py keeps its window inside the positions the virtual tokens leave,
export_hf.py's peft adapter loads in real peft with the same logits and imports back to the same
beam predictions, and work.sh's paper preset gives gpt2_ft.py flags it accepts for every method."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from backends import training_backend as backend_class
from shared.model.config import GPT2Config
from shared.model.peft_methods import flag_problems, positions_problem, read_peft_settings
from shared.pipeline.engine import PRESETS
from shared.pipeline.peft_pipeline import method_flags
from shared.pipeline.run_settings import stage_argv
from shared.train.train_args import build_parser, model_config
from shared.train.trainer import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = ["--n_embd", "32", "--n_layer", "2", "--n_head", "2"]
METHOD_FLAGS = {"prefix": ["--peft", "prefix", "--num_virtual_tokens", "4"],
                "ptuning": ["--peft", "ptuning", "--num_virtual_tokens", "3",
                            "--ptuning_encoder", "lstm", "--encoder_hidden_size", "8"],
                "prompt": ["--peft", "prompt", "--num_virtual_tokens", "4"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, encoded):
    """method -> the final checkpoint of 6 torch steps of it on E2E."""
    out = {}
    for method, flags in METHOD_FLAGS.items():
        work = tmp_path_factory.mktemp(method)
        args = build_parser().parse_args([
            "--backend", "torch", "--device", "cpu", "--train_data", str(encoded / "train.jsonl"),
            "--valid_data", str(encoded / "valid.jsonl"), *SHAPE, "--train_batch_size", "4",
            "--seq_len", "64", "--max_step", "6", "--lr", "0.01", "--eval_interval", "6",
            "--max_eval_batches", "1", "--random_seed", "2", "--work_dir", str(work),
            "--no_progress", *flags])
        out[method] = train(args, backend_class("torch"))["final_checkpoint"]
    return out


def script(name, *args, stdin=None):
    return subprocess.run([sys.executable, os.path.join("scripts", name), *args], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=600)


def without_compiling(text):
    return "\n".join(line for line in text.splitlines() if "Compiling Operators" not in line)


@pytest.mark.parametrize("method", ["prefix", "ptuning"])
def test_generate_samples_a_peft_checkpoint_alike_in_both_backends(trained, vocab_dir, method):
    """generate.py builds the model from the checkpoint's own record (no --peft flag) and draws
    the same seeded samples in torch and Jittor."""
    outputs = {}
    for backend in ("torch", "jittor"):
        proc = script("generate.py", "--backend", backend, "--device", "cpu", *SHAPE,
                      "--init_checkpoint", trained[method], "--vocab", vocab_dir,
                      "--prompt", "name[The Eagle], food[French]", "--temperature", "1.0",
                      "--top_k", "40", "--seed", "7", "--num_samples", "2",
                      "--max_new_tokens", "12")
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs[backend] = proc.stdout
    assert outputs["torch"] == outputs["jittor"]
    assert outputs["torch"].count("name[The Eagle], food[French]") == 2


def test_chat_keeps_its_window_in_the_positions_the_prefix_leaves(trained, vocab_dir):
    proc = script("chat.py", "--backend", "torch", "--device", "cpu", *SHAPE,
                  "--init_checkpoint", trained["prefix"], "--vocab", vocab_dir,
                  "--max_new_tokens", "4", "--seed", "1", "--context", "1024",
                  stdin="Hello there.\nAnd again.\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(">>> ") == 3
    # 1024 positions, 4 of them the prefix's
    assert ("chat: --context 1024 exceeds the model's 1020 positions; using 1020"
            in without_compiling(proc.stderr)), proc.stderr


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_export_hf_round_trip_of_a_trained_checkpoint(trained, encoded, tmp_path, method):
    """export_hf.py export: real peft loads the adapter on the exported transformers GPT-2 and
    gives our logits; export_hf.py import: the base + the imported adapter write the same beam
    predictions as the trained checkpoint."""
    import torch
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from torch_impl.model import GPT2LMModel
    proc = script("export_hf.py", "export", "--init_checkpoint", trained[method], *SHAPE,
                  "--peft_dir", str(tmp_path / "adapter"), "--hf_dir", str(tmp_path / "base"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}[method]

    ours = GPT2LMModel(GPT2Config(n_embd=32, n_layer=2, n_head=2,
                                  peft=read_peft_settings(trained[method]))).eval()
    ours.load_weight(trained[method])
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 50257, size=(2, 9)))
    base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    with_adapter = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        expected = ours(ids)[0].numpy()
        logits = with_adapter(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    np.testing.assert_allclose(logits[:, -ids.shape[1]:], expected, atol=2e-5, rtol=1e-4)

    proc = script("export_hf.py", "import", "--peft_dir", str(tmp_path / "adapter"), *SHAPE,
                  "--out", str(tmp_path / "back.pt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = (encoded / "valid.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "queries.jsonl").write_text("".join(lines[:40]))
    predictions = {}
    for name, weights in (("trained", ["--init_checkpoint", trained[method]]),
                          ("imported", ["--init_checkpoint", str(tmp_path / "base"),
                                        "--lora_checkpoint", str(tmp_path / "back.pt")])):
        proc = script("gpt2_beam.py", "--backend", "torch", "--device", "cpu", *SHAPE, *weights,
                      "--data", str(tmp_path / "queries.jsonl"), "--seq_len", "64",
                      "--eval_len", "6", "--beam", "3", "--batch_size", "8", "--unique_contexts",
                      "--work_dir", str(tmp_path / name), "--no_progress")
        assert proc.returncode == 0, proc.stderr[-2000:]
        predictions[name] = (tmp_path / name / "beam_prediction.jsonl").read_text()
    assert predictions["imported"] == predictions["trained"]
    assert predictions["trained"].count("\n") >= 2  # the unique contexts of 40 lines


@pytest.mark.parametrize("preset", sorted(PRESETS["peft"]))
def test_every_preset_gives_each_method_flags_gpt2_ft_accepts(preset, tmp_path):
    """work.sh --task peft's flags per method (the paper preset's GPT-2 M sizes among them) parse
    and pass gpt2_ft.py's --peft checks, and the virtual tokens fit beside --seq_len and the
    beam search's eval_len."""
    settings = PRESETS["peft"][preset]
    for method, values in settings["method_settings"].items():
        argv = stage_argv("gpt2_ft.py", dict(
            backend="torch", train_data=str(tmp_path / "t.jsonl"),
            valid_data=str(tmp_path / "v.jsonl"), work_dir=str(tmp_path / "w"),
            model_card=settings["model_card"], seq_len=settings["seq_len"], lr=values["lr"],
            **method_flags(method, values)))[1:]
        args = build_parser().parse_args(argv)
        assert flag_problems(args) == [], (preset, method)
        config = model_config(args)
        assert positions_problem(config, settings["seq_len"] + settings["eval_len"]) is None
        assert args.peft == method


@pytest.mark.parametrize("method,tensors", [("prefix", 1), ("ptuning", 21)])
def test_check_alignment_compares_the_gradients_of_the_method_s_parameters(
        trained, encoded, tmp_path, method, tensors):
    """scripts/check_alignment.py (work.sh's check) on a PEFT checkpoint: both backends, the
    gradients of what the method trains only (the prefix table; the P-tuning LSTM encoder's
    embedding, 16 LSTM tensors and its MLP's 4)."""
    proc = script("check_alignment.py", "--init_checkpoint", trained[method], *SHAPE,
                  "--data", str(encoded / "valid.jsonl"), "--seq_len", "64", "--batch_size", "4",
                  "--batches", "1", "--device", "cpu", "--json", str(tmp_path / "check.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["grad_params"] == tensors
    assert f"{tensors} trainable tensors, 1 batches of 4 on cpu: PASS" in proc.stdout
