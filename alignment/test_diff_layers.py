"""scripts/diff_layers.py (GPT-2 through alignment.auto_diff) end to end on a tiny seeded model:
the report files, the JSON layout, a clean pass without bugs and a localized failure with a
planted one."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("diff_layers_script",
                                               os.path.join(ROOT, "scripts", "diff_layers.py"))
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

ARGS = ["--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--lora_dim", "4", "--lora_alpha", "16",
        "--batch_size", "2", "--seq_len", "48", "--device", "cpu"]


def run(tmp_path, encoded, name, extra=()):
    out = tmp_path / name
    code = script.main([*ARGS, "--data", str(encoded / "valid.jsonl"), "--out", str(out), *extra])
    with open(out / "diff_layers.json") as f:
        return code, json.load(f), out


def test_report_files_and_a_clean_pass(tmp_path, encoded):
    code, doc, out = run(tmp_path, encoded, "clean")
    assert code == 0 and doc["passed"]
    assert doc["first_divergence"] == {"forward": None, "backward": None}
    kinds = {r["kind"] for r in doc["records"]}
    assert kinds == {"outputs", "inputs", "output_grads", "input_grads", "param_grads",
                     "local_input_grads", "local_param_grads", "local_output_grads"}
    assert {"transformer.h.1.mlp", "transformer.h.0.attn.c_attn.lora_delta", "lm_head", "loss"} <= {
        r["name"] for r in doc["records"]}
    assert os.path.getsize(out / "diff_layers.png") > 10_000
    assert "first divergence: forward `None`" in (out / "diff_layers.md").read_text()


def test_planted_bug_is_localized_in_the_report(tmp_path, encoded):
    code, doc, out = run(tmp_path, encoded, "planted", ["--plant", "GELU exact instead of tanh"])
    assert code == 1 and not doc["passed"]
    assert doc["first_divergence"] == {"forward": "transformer.h.0.mlp", "backward": None}
    # the gradients after the forward divergence differ too: explained, not counted as failing
    assert doc["explained"] > 0 and doc["failing"] == sum(
        1 for r in doc["records"] if not r["passed"] and not r.get("explained"))
    assert any("backward not judged" in n for n in doc["notes"])
    assert "GELU exact instead of tanh" in (out / "diff_layers.md").read_text()


def test_bad_arguments_fail_clearly(tmp_path, encoded):
    with pytest.raises(SystemExit):
        script.main([*ARGS, "--data", str(encoded / "valid.jsonl"), "--out", str(tmp_path),
                     "--plant", "no such bug"])
