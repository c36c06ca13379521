"""scripts/instruct_ft.py --peft METHOD: a tiny model instruction-tuned with prefix tuning and with
adapters in both backends (the same losses on the first steps, peft's counts in the summary), and
a flag of one method given to another refused in one line, exit 2, nothing written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(n_embd=32, n_layer=2, n_head=2)


def instruct_file():
    path = os.environ.get("INSTRUCT_DATA") or os.path.join(ROOT, "..", "shared", "data",
                                                           "instruct", "instruction-data.json")
    if not os.path.isfile(path):
        pytest.skip("no instruction-data.json (set INSTRUCT_DATA)")
    return path


def instruct_argv(work, vocab_dir, backend, *flags):
    return ["--backend", backend, "--device", "cpu", "--data", instruct_file(), "--limit", "40",
            *(x for k, v in SHAPE.items() for x in (f"--{k}", str(v))), "--max_step", "4",
            "--lr", "0.01", "--train_batch_size", "4", "--seq_len", "128", "--log_interval", "1",
            "--eval_interval", "4", "--max_eval_batches", "1", "--random_seed", "3",
            "--no_eval", "--attn", "math", "--work_dir", str(work), "--no_progress",
            "--vocab", vocab_dir, *flags]


def instruct_ft(work, vocab_dir, backend, *flags):
    argv = [sys.executable, os.path.join(ROOT, "scripts", "instruct_ft.py"),
            *instruct_argv(work, vocab_dir, backend, *flags)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("method,flags,trainable", [
    ("prefix", ["--num_virtual_tokens", "4"], 4 * 2 * 2 * 32),  # N * n_layer * 2 * n_embd
    ("adapter", ["--adapter_dim", "4"], 2 * 2 * (32 * 4 + 4 + 4 * 32 + 32)),
])
def test_instruct_ft_trains_a_peft_method_alike_in_both_backends(tmp_path, vocab_dir, method,
                                                                  flags, trainable, run_in_process):
    """In this process (the refusals below, test_instruct.py and the instruct pipeline start the
    script): the claim is what both backends compute."""
    losses = {}
    for backend in ("torch", "jittor"):
        work = tmp_path / backend
        status, out, err = run_in_process("instruct_ft", *instruct_argv(work, vocab_dir, backend,
                                                                        "--peft", method, *flags))
        assert status == 0, out[-2000:] + err[-2000:]
        assert f"trainable params: {trainable:,d} || all params: " in out
        summary = json.loads((work / "train_summary.json").read_text())
        assert summary["trainable_params"] == trainable and summary["steps"] == 4
        with open(work / "train_log.jsonl") as f:
            losses[backend] = [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]
    assert len(losses["torch"]) == 4
    np.testing.assert_allclose(losses["jittor"], losses["torch"], rtol=0, atol=5e-5)


@pytest.mark.parametrize("flags,named", [
    (["--peft", "prefix", "--adapter_dim", "4"], "--adapter_dim is a flag of --peft adapter"),
    (["--peft", "adapter", "--num_virtual_tokens", "4"], "--num_virtual_tokens is a flag of"),
    (["--peft", "prompt", "--lora_dim", "4"], "--lora_dim 4 is a flag of --peft lora"),
])
def test_instruct_ft_refuses_a_flag_of_another_method(tmp_path, vocab_dir, flags, named):
    work = tmp_path / "out"
    proc = instruct_ft(work, vocab_dir, "torch", *flags)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if named in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not work.exists()
