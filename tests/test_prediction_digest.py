"""Prediction files say which queries they were generated from, and decoding checks it.

gpt2_beam.py writes `{"id", "predict", "query_digest"}` per line: the reference's two keys, which
microsoft/LoRA's tools read unchanged, plus a digest of the query's (MR's) token ids. gpt2_decode.py
recomputes the digest from the formatted input file and refuses a sample file made from another
input file, which it used to pair with the wrong MRs whenever the ids were in range.
"""
import json
import os
import subprocess
import sys

import pytest

from shared.model.checkpoint import save_checkpoint
from shared.model.config import GPT2Config
from shared.decode.scorer_files import decode_files
from shared.text.e2e_data import encode_record
from shared.model.params import init_state_dict
from shared.decode.prediction_file import query_digest
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FILE_A = [{"context": "name : Aromi | area : riverside", "completion": "Aromi is by the river."},
          {"context": "name : Café Bleu", "completion": "Café Bleu, a café."}]
FILE_B = [{"context": "name : The Mill | food : Thai", "completion": "The Mill serves Thai food."},
          {"context": "name : Zizzi", "completion": "Zizzi is here."}]


@pytest.fixture(scope="module")
def tokenizer(vocab_dir):
    return load_tokenizer(vocab_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def samples_for(records, tokenizer, digest=True):
    rows = []
    for i, record in enumerate(records):
        context = encode_record(record, tokenizer)["context"]  # with --add_bos's end-of-text
        row = {"id": i, "predict": tokenizer.encode(" some text") + [EOT_ID, 0, 0]}
        if digest:
            row["query_digest"] = query_digest(context)
        rows.append(row)
    return rows


def test_digest_ignores_the_trailing_end_of_text_and_tells_queries_apart(tokenizer):
    ids = tokenizer.encode(FILE_A[0]["context"])
    assert query_digest(ids) == query_digest(ids + [EOT_ID])
    assert query_digest(ids) != query_digest(tokenizer.encode(FILE_A[1]["context"]))


def test_decode_accepts_the_samples_of_its_own_input_file(tmp_path, tokenizer):
    inputs = write_jsonl(tmp_path / "a.jsonl", FILE_A)
    samples = write_jsonl(tmp_path / "s.jsonl", samples_for(FILE_A, tokenizer))
    assert decode_files(inputs, samples, tokenizer, tmp_path / "r.txt", tmp_path / "p.txt") == 2


def test_decode_refuses_samples_made_from_another_input_file(tmp_path, tokenizer):
    inputs = write_jsonl(tmp_path / "b.jsonl", FILE_B)
    samples = write_jsonl(tmp_path / "s.jsonl", samples_for(FILE_A, tokenizer))
    with pytest.raises(ValueError, match=r"s\.jsonl:1: .*not generated from line 1 of .*b\.jsonl"):
        decode_files(inputs, samples, tokenizer, tmp_path / "r.txt", tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()


def test_old_sample_files_without_digests_still_decode_with_a_warning(tmp_path, tokenizer, capsys):
    inputs = write_jsonl(tmp_path / "b.jsonl", FILE_B)
    samples = write_jsonl(tmp_path / "s.jsonl", samples_for(FILE_A, tokenizer, digest=False))
    assert decode_files(inputs, samples, tokenizer, tmp_path / "r.txt", tmp_path / "p.txt") == 2
    assert "no query digests" in capsys.readouterr().err


def test_non_utf8_sample_file_names_file_and_line(tmp_path, tokenizer):
    inputs = write_jsonl(tmp_path / "a.jsonl", FILE_A)
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"id": 0, "predict": [1]}\n{"id": 1, "predict": [2]} \xff\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:2: not valid UTF-8"):
        decode_files(inputs, str(path), tokenizer, tmp_path / "r.txt", tmp_path / "p.txt")


def test_beam_writes_digests_that_decode_checks(tmp_path, vocab_dir, tokenizer):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "test_formatted.jsonl", FILE_A)
    write_jsonl(data / "test.jsonl", [encode_record(r, tokenizer) for r in FILE_A])
    write_jsonl(data / "other_formatted.jsonl", FILE_B)
    config = GPT2Config(n_embd=16, n_layer=1, n_head=2)
    save_checkpoint(tmp_path / "model.safetensors", init_state_dict(config, seed=1))
    subprocess.run([sys.executable, "scripts/gpt2_beam.py", "--backend", "torch", "--device", "cpu",
                    "--data", str(data / "test.jsonl"), "--n_embd", "16", "--n_layer", "1",
                    "--n_head", "2", "--init_checkpoint", str(tmp_path / "model.safetensors"),
                    "--seq_len", "48", "--eval_len", "4", "--beam", "2", "--work_dir",
                    str(tmp_path), "--output_file", "p.jsonl", "--no_progress"],
                   cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["id", "predict", "query_digest"]] * 2
    decode = [sys.executable, "scripts/gpt2_decode.py", "--vocab", vocab_dir, "--sample_file",
              str(tmp_path / "p.jsonl"), "--output_ref_file", str(tmp_path / "r.txt"),
              "--output_pred_file", str(tmp_path / "pr.txt"), "--input_file"]
    ok = subprocess.run(decode + [str(data / "test_formatted.jsonl")], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(decode + [str(data / "other_formatted.jsonl")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not generated from line 1" in bad.stderr
    assert "Traceback" not in bad.stderr
