"""Bad input to the task scripts stops before any training with one line naming file and line."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *argv, vocab_dir):
    env = dict(os.environ, PYTHONPATH=ROOT, GPT2_VOCAB_DIR=vocab_dir)
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *argv],
                          capture_output=True, text=True, env=env, timeout=300)


def test_pretrain_names_an_empty_or_non_utf8_file(tmp_path, vocab_dir):
    good = tmp_path / "good.txt"
    good.write_text("Some text. " * 200, encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    proc = run("pretrain.py", "--backend", "torch", "--device", "cpu", "--text", str(good),
               str(empty), "--max_step", "1", "--work_dir", str(tmp_path / "w"), vocab_dir=vocab_dir)
    assert proc.returncode == 2 and f"{empty}: the file is empty" in proc.stderr
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00text")
    proc = run("pretrain.py", "--backend", "torch", "--device", "cpu", "--text", str(binary),
               "--max_step", "1", "--work_dir", str(tmp_path / "w"), vocab_dir=vocab_dir)
    assert proc.returncode == 2 and f"{binary}:1: not UTF-8" in proc.stderr
    proc = run("pretrain.py", "--backend", "torch", "--text", str(good), "--lora_dim", "4",
               "--max_step", "1", vocab_dir=vocab_dir)
    assert proc.returncode == 2 and "leave --lora_dim at 0" in proc.stderr
    assert not os.path.exists(tmp_path / "w" / "model.1.pt")


def test_classify_ft_names_a_line_without_tab(tmp_path, vocab_dir):
    data = tmp_path / "spam.tsv"
    data.write_text("ham\tfine\nspam call now\n", encoding="utf-8")
    proc = run("classify_ft.py", "--backend", "torch", "--device", "cpu", "--data", str(data),
               "--max_step", "1", "--work_dir", str(tmp_path / "w"), vocab_dir=vocab_dir)
    assert proc.returncode == 2 and f"{data}:2: no tab" in proc.stderr
    proc = run("classify_ft.py", "--backend", "torch", "--data", str(data), "--trainable", "lora",
               "--max_step", "1", vocab_dir=vocab_dir)
    assert proc.returncode == 2 and "--trainable lora needs --lora_dim" in proc.stderr
    proc = run("classify.py", "--backend", "torch", "--model_dir", str(tmp_path / "w"),
               "--text", "hi", vocab_dir=vocab_dir)
    assert proc.returncode == 2 and "classifier.json not found" in proc.stderr
