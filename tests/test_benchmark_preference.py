"""scripts/benchmark.py --preference_tasks: one row per preference-tuning task and backend
("torch task=dpo"), the synthetic batch's layout, a tiny CPU run of every row, and bad flags
refused in one line before any measurement."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from shared.model.config import GPT2Config
from shared.pipeline.benchmark_plan import (preference_variants, render,
                                            split_preference_variant, synthetic_preference_batch)
from shared.text.tokenizer import EOT_ID

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(*args):
    return subprocess.run([sys.executable, "scripts/benchmark.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_the_plan_has_a_row_per_task_and_backend():
    rows = preference_variants(["reward", "ppo"])
    assert rows == ["torch task=reward", "jittor task=reward", "torch task=ppo", "jittor task=ppo"]
    assert split_preference_variant("jittor task=dpo") == ("jittor", "dpo")


def test_the_batch_is_prompt_then_response_at_full_length():
    config = GPT2Config.from_model_card("gpt2.sm", n_embd=32, n_layer=1, n_head=2)
    batch = synthetic_preference_batch(config, SimpleNamespace(batch_size=4, seq_len=8))
    assert batch["input"].shape == batch["target"].shape == batch["mask"].shape == (4, 8)
    assert np.array_equal(batch["target"][:, :-1], batch["input"][:, 1:])
    assert (batch["target"][:, -1] == EOT_ID).all() and (batch["length"] == 8).all()
    assert batch["mask"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]  # next token: the response's


def test_a_cpu_run_measures_every_task_in_both_backends(tmp_path):
    out = tmp_path / "benchmark.md"
    proc = run_benchmark("--device", "cpu", "--precision", "fp32", "--backends", "",
                         "--preference_tasks", "reward,dpo,ppo", "--cards", "gpt2.sm",
                         "--extra_cards", "", "--n_embd", "32", "--n_layer", "1", "--n_head", "2",
                         "--seq_len", "16", "--batch_size", "2", "--steps", "2", "--warmup", "1",
                         "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    rows = record["preference"]["gpt2.sm"]
    assert list(rows) == preference_variants(["reward", "dpo", "ppo"]) and not record["failed"]
    for name, r in rows.items():
        assert r["tokens_per_s"] > 0 and r["steps_per_s"] > 0, name
        assert ("rollout_scoring_ms" in r) == (r["task"] == "ppo"), name
    # LoRA r=4 in every row: the reward model adds its head (less the pairwise-invariant bias),
    # PPO its value head (32 weights + a bias)
    lora = rows["torch task=dpo"]["trainable_params"]
    assert rows["torch task=reward"]["trainable_params"] == lora + 32
    assert rows["torch task=ppo"]["trainable_params"] == lora + 33
    assert all(rows[f"jittor task={t}"]["trainable_params"] == rows[f"torch task={t}"]
               ["trainable_params"] for t in ("reward", "dpo", "ppo"))
    report = out.read_text()
    assert report == render(record) and "## Preference tuning" in report
    assert "| model | variant |" not in report  # no training rows were asked for
    for task in ("reward", "dpo", "ppo"):
        assert f"| gpt2.sm | {task} | torch |" in report
        assert f"| gpt2.sm | {task} | jittor |" in report


def test_bad_preference_flags_are_one_line_errors(tmp_path):
    proc = run_benchmark("--device", "cpu", "--preference_tasks", "dpo,rlhf",
                         "--out", str(tmp_path / "b.md"))
    assert proc.returncode == 2 and "--preference_tasks: unknown ['rlhf']" in proc.stderr
    proc = run_benchmark("--device", "cpu", "--preference_tasks", "ppo,reward", "--batch_size",
                         "3", "--out", str(tmp_path / "b.md"))
    assert proc.returncode == 2
    assert "--batch_size 3 with --preference_tasks reward: must be even" in proc.stderr
    assert not os.listdir(tmp_path)
