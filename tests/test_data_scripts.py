"""The data scripts as a user runs them: `python scripts/x.py` from the repo root."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from shared.text.e2e_data import read_encoded
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env=full_env, timeout=60)


def head_of(e2e_dir, split, n, dest):
    with open(os.path.join(e2e_dir, f"{split}.txt"), encoding="utf-8") as f:
        dest.write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    return dest


def test_format_then_encode_like_the_reference_pipeline(vocab_dir, e2e_dir, tmp_path):
    raw = head_of(e2e_dir, "valid", 5, tmp_path / "valid.txt")
    formatted, encoded = tmp_path / "valid_formatted.jsonl", tmp_path / "valid.jsonl"
    proc = run("scripts/format_converting_e2e.py", str(raw), str(formatted))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in formatted.read_text().splitlines()]
    assert len(records) == 5 and set(records[0]) == {"context", "completion"}
    proc = run("scripts/gpt2_encode.py", "--input", str(formatted), "--output", str(encoded),
               "--vocab", vocab_dir, "--add_bos", "--add_eos")
    assert proc.returncode == 0, proc.stderr
    enc = load_tokenizer(vocab_dir)
    assert read_encoded(encoded)[0] == (enc.encode(records[0]["context"]) + [EOT_ID],
                                        enc.encode(" " + records[0]["completion"]) + [EOT_ID])
    proc = run("scripts/gpt2_encode.py", "--input", str(formatted), "--output", str(encoded),
               env={"GPT2_VOCAB_DIR": vocab_dir})  # no --add_bos/--add_eos, vocab from env
    assert proc.returncode == 0, proc.stderr
    assert read_encoded(encoded)[0] == (enc.encode(records[0]["context"]),
                                        enc.encode(" " + records[0]["completion"]))


def test_prepare_script_writes_then_skips(vocab_dir, e2e_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        head_of(e2e_dir, split, 10, raw / f"{split}.txt")
    args = ("scripts/prepare_e2e.py", "--data_dir", str(raw), "--out_dir", str(tmp_path / "out"),
            "--vocab", vocab_dir)
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": written") == 3
    for split in ("train", "valid", "test"):
        assert len(read_encoded(tmp_path / "out" / f"{split}.jsonl")) == 10
        assert (tmp_path / "out" / f"{split}_formatted.jsonl").is_file()
    proc = run(*args)
    assert proc.returncode == 0 and proc.stdout.count("up to date, skipped") == 3


def test_prepare_script_takes_data_dir_from_env(vocab_dir, e2e_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        head_of(e2e_dir, split, 3, raw / f"{split}.txt")
    proc = run("scripts/prepare_e2e.py", "--out_dir", str(tmp_path / "out"),
               env={"E2E_DATA_DIR": str(raw), "GPT2_VOCAB_DIR": vocab_dir})
    assert proc.returncode == 0, proc.stderr
    assert len(read_encoded(tmp_path / "out" / "test.jsonl")) == 3


@pytest.mark.parametrize("script, make_args, message", [
    ("scripts/format_converting_e2e.py",
     lambda t: [str(t / "bad.txt"), str(t / "out.jsonl")], r"bad.txt:2: expected one '||'"),
    ("scripts/format_converting_e2e.py",
     lambda t: [str(t / "missing.txt"), str(t / "out.jsonl")], "missing.txt"),
    ("scripts/gpt2_encode.py",
     lambda t: ["--input", str(t / "bad.jsonl"), "--output", str(t / "out.jsonl")],
     "bad.jsonl:1: invalid JSON"),
    ("scripts/gpt2_encode.py",
     lambda t: ["--input", str(t / "bad.jsonl"), "--output", str(t / "out.jsonl"),
                "--vocab", str(t)], "vocab file missing"),
    ("scripts/prepare_e2e.py",
     lambda t: ["--data_dir", str(t), "--out_dir", str(t / "out")], "lacks valid.txt, test.txt"),
])
def test_bad_input_exits_2_with_message(vocab_dir, tmp_path, script, make_args, message):
    (tmp_path / "bad.txt").write_text("a||b\nno separator\n")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "train.txt").write_text("a||b\n")
    proc = run(script, *make_args(tmp_path), env={"GPT2_VOCAB_DIR": vocab_dir})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_prepare_script_reports_bad_line(vocab_dir, tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("a||b\n" + ("c||\n" if split == "valid" else ""))
    proc = run("scripts/prepare_e2e.py", "--data_dir", str(tmp_path), "--out_dir",
               str(tmp_path / "out"), "--vocab", vocab_dir)
    assert proc.returncode == 2
    assert "valid.txt:2: empty text after '||'" in proc.stderr


def test_download_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    proc = subprocess.run([bash, "-n", os.path.join(ROOT, "scripts", "download_data.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
