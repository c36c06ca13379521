"""Instruction data (shared/text/instruct_data.py), scripts/instruct_ft.py end to end on a tiny model,
and --tensorboard event files read back with an independent TFRecord reader."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from shared.text.batching import FTDataset
from shared.text.instruct_data import (InstructDataError, encode_entry, format_prompt, read_entries,
                                       split_entries)
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRIES = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
           {"instruction": "Say hi.", "input": "", "output": "Hi there!"}]


def instruct_file():
    path = os.environ.get("INSTRUCT_DATA") or os.path.join(ROOT, "..", "shared", "data",
                                                           "instruct", "instruction-data.json")
    if not os.path.isfile(path):
        pytest.skip("no instruction-data.json (set INSTRUCT_DATA)")
    return path


def test_alpaca_template():
    assert format_prompt(ENTRIES[1]) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n")
    assert format_prompt(ENTRIES[0]).endswith(
        "request.\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert "paired with an input" in format_prompt(ENTRIES[0])


@pytest.mark.parametrize("text, message", [
    ('[{"instruction": "a", "output": "b"}, {"input": "x", "output": "y"}]',
     r"bad\.json: entry 1: has no 'instruction'"),
    ('{"instruction": "a"}', r"bad\.json: expected a JSON list of entries, got a dict"),
    ('[\n  {"instruction": "a",\n   "output": }\n]', r"bad\.json:3:14: invalid JSON"),
    ('[{"instruction": "a", "output": 3}]', r"entry 0: 'output' is a int, not a string"),
    ('[{"instruction": " ", "output": "b"}]', r"entry 0: 'instruction' is empty"),
    ('["text"]', r"entry 0: expected an object, got str"),
    ('[]', r"holds no entries"),
])
def test_bad_files_name_file_and_entry(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InstructDataError, match=message):
        read_entries(path)


def test_split_is_seeded_disjoint_and_complete():
    entries = [dict(ENTRIES[0], output=str(i)) for i in range(100)]
    a, b = split_entries(entries, seed=7), split_entries(entries, seed=7)
    assert a == b and split_entries(entries, seed=8) != a
    ids = {k: [e["id"] for e in v] for k, v in a.items()}
    assert (len(ids["test"]), len(ids["valid"]), len(ids["train"])) == (10, 5, 85)
    assert sorted(ids["test"] + ids["valid"] + ids["train"]) == list(range(100))
    assert all(entries[e["id"]]["output"] == e["output"] for e in a["test"])


@pytest.mark.parametrize("response_only", [True, False])
def test_loss_mask_covers_the_response_or_everything(vocab_dir, response_only):
    tok = load_tokenizer(vocab_dir)
    pairs = [encode_entry(e, tok, response_only) for e in ENTRIES]
    data = FTDataset([(p["context"], p["completion"]) for p in pairs], 2, 128)
    batch = data.collate([0, 1])
    for row, entry in enumerate(ENTRIES):
        prompt = tok.encode(format_prompt(entry))
        response = tok.encode(entry["output"]) + [EOT_ID]
        n = len(prompt) + len(response)
        scored = batch["target"][row][batch["mask"][row] > 0].tolist()
        expected = response if response_only else (prompt + response)[1:]
        assert scored == expected
        assert batch["input"][row][:n].tolist() == prompt + response


def read_events(path):
    """Events of a TensorBoard file: TFRecord framing checked with our own masked CRC32C."""
    from tensorboardX.proto.event_pb2 import Event
    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", data[pos + 8:pos + 12])
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == masked_crc32c(header) and body_crc == masked_crc32c(body)
        events.append(Event.FromString(body))
        pos += 16 + length
    return events


def masked_crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_known_value():
    unmasked = (masked_crc32c(b"123456789") - 0xA282EAD8) & 0xFFFFFFFF
    assert ((unmasked >> 17) | (unmasked << 15)) & 0xFFFFFFFF == 0xE3069283


def test_instruct_ft_trains_scores_and_writes_tensorboard(tmp_path, vocab_dir, run_in_process):
    """In this process (the bad-file test below and the instruct pipeline start the script)."""
    work = tmp_path / "run"
    argv = ["--backend", "torch", "--device", "cpu", "--data", instruct_file(), "--limit", "40",
            "--n_embd", "32", "--n_layer", "2", "--n_head", "2", "--lora_dim", "4",
            "--lora_alpha", "16", "--max_step", "6", "--lr", "0.01", "--train_batch_size", "4",
            "--seq_len", "256", "--log_interval", "2", "--eval_interval", "3", "--eval_limit", "2",
            "--max_new_tokens", "6", "--work_dir", str(work), "--no_progress",
            "--tensorboard", str(tmp_path / "tb"), "--vocab", vocab_dir]
    status, out, err = run_in_process("instruct_ft", *argv)
    assert status == 0, out + err
    result = json.loads((work / "instruct_eval.json").read_text())
    assert result["test_entries"] == 2 and 0.0 <= result["rouge_l"] <= 1.0
    assert result["loss_on"] == "response tokens" and result["test_ppl"] > 1.0
    responses = [json.loads(line) for line in (work / "test_responses.jsonl").read_text().splitlines()]
    assert len(responses) == 2 and all(r["reference"] for r in responses)
    logged = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    files = os.listdir(tmp_path / "tb")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents.")
    scalars = {}
    for event in read_events(tmp_path / "tb" / files[0]):
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    train = [(r["step"], r["loss"]) for r in logged if r["kind"] == "train"]
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in train] == list(range(1, 7))
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [v for _, v in train], rtol=1e-6)
    assert [s for s, _ in scalars["valid/loss"]] == [3, 6] and "train/lr" in scalars
    # --eval_only scores the finished run again, identically (greedy decoding)
    status, _, err = run_in_process("instruct_ft", *argv[:-4], "--eval_only", "--vocab", vocab_dir)
    assert status == 0, err
    assert json.loads((work / "instruct_eval.json").read_text()) == result


def test_instruct_ft_reports_a_bad_file(tmp_path, vocab_dir):
    bad = tmp_path / "data.json"
    bad.write_text('[{"instruction": "a", "output": "b"}, {"output": "c"}]')
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "instruct_ft.py"),
                          "--backend", "torch", "--data", str(bad), "--max_step", "1",
                          "--vocab", vocab_dir, "--work_dir", str(tmp_path / "w")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert f"error: {bad}: entry 1: has no 'instruction'" in out.stderr
