"""scripts/benchmark.py --peft_methods: the plan of one row per method and backend ("torch
peft=prefix"), its models and FLOP counts, a tiny CPU run of those rows, and bad names refused."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

from shared.model.params import parameter_counts
from shared.pipeline.benchmark_plan import (lora_training_flops_per_token, peft_config,
                                            peft_variants, split_variant, training_flops_per_token)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = SimpleNamespace(n_embd=32, n_layer=2, n_head=2)


def run_benchmark(*args):
    return subprocess.run([sys.executable, "scripts/benchmark.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_the_plan_has_a_row_per_method_and_backend():
    rows = peft_variants(["lora", "prefix"])
    assert rows == ["torch peft=lora", "jittor peft=lora", "torch peft=prefix",
                    "jittor peft=prefix"]
    assert [split_variant(r) for r in rows[1:3]] == [("jittor", "lora"), ("torch", "prefix")]
    assert split_variant("torch+compile") == ("torch+compile", None)


def test_each_row_benchmarks_its_method_at_the_default_sizes():
    e, layers = TINY.n_embd, TINY.n_layer
    prefix = peft_config("gpt2.sm", TINY, "prefix")
    assert prefix.peft.method == "prefix" and prefix.lora_attn_dim == 0
    assert parameter_counts(prefix)[0] == 20 * layers * 2 * e  # 20 virtual tokens by default
    assert parameter_counts(peft_config("gpt2.sm", TINY, "bitfit"))[0] == (11 * layers + 1) * e
    assert peft_config("gpt2.sm", TINY, "lora").lora_attn_dim == 4
    full = peft_config("gpt2.sm", TINY, "full")
    assert full.peft is None and parameter_counts(full)[0] == parameter_counts(full)[1]
    lora = lora_training_flops_per_token(full, 16)
    assert training_flops_per_token(full, 16, "prefix") == lora
    top2 = training_flops_per_token(full, 16, "top2")
    assert top2 == lora + 2 * 2 * 12 * e * e  # the weight gradients of the last two blocks
    assert training_flops_per_token(full, 16, "full") == \
        lora + 2 * (layers * 12 * e * e + e * full.vocab_size)


def test_a_cpu_run_measures_the_rows_of_each_method(tmp_path):
    out = tmp_path / "benchmark.md"
    proc = run_benchmark("--device", "cpu", "--precision", "fp32", "--backends", "torch",
                         "--peft_methods", "prefix,bitfit", "--cards", "gpt2.sm",
                         "--extra_cards", "", "--n_embd", "32", "--n_layer", "1", "--n_head", "2",
                         "--seq_len", "16", "--batch_size", "2", "--steps", "2", "--warmup", "1",
                         "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    rows = record["training"]["gpt2.sm"]
    assert list(rows) == ["torch", "torch peft=prefix", "jittor peft=prefix",
                          "torch peft=bitfit", "jittor peft=bitfit"]
    assert all(r["tokens_per_s"] > 0 for r in rows.values()) and not record["failed"]
    report = out.read_text()
    for row in rows:
        assert f"| gpt2.sm | {row} |" in report


def test_an_unknown_method_is_a_one_line_error(tmp_path):
    proc = run_benchmark("--device", "cpu", "--peft_methods", "prefix,lorax",
                         "--out", str(tmp_path / "b.md"))
    assert proc.returncode == 2 and "--peft_methods: unknown ['lorax']" in proc.stderr
    assert not os.listdir(tmp_path)
