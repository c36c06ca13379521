"""shared/text/e2e_data.py: the reference's formatting/encoding, bad-input errors, prepare_e2e."""
import json
import os
import re
import time

import pytest

from shared.text.e2e_data import (E2EDataError, encode_file, format_file, parse_raw_line,
                                  prepare_e2e, read_encoded, read_formatted, read_raw, split_paths)
from shared.runtime.paths import DataDirError, resolve_e2e_dir, resolve_vocab_dir
from shared.text.tokenizer import EOT_ID, load_tokenizer


def reference_format(in_txt):
    """microsoft/LoRA examples/NLG/src/format_converting_e2e.py, transcribed."""
    out = []
    with open(in_txt, "r", encoding="utf8") as reader:
        for line in reader:
            items = line.strip().split("||")
            x = {"context": items[0], "completion": items[1].strip("\n")}
            out.append(json.dumps(x) + "\n")
    return "".join(out)


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- formatting
def test_format_file_is_byte_equal_to_reference(e2e_dir, tmp_path):
    for split in ("valid", "test"):
        src = os.path.join(e2e_dir, f"{split}.txt")
        out = tmp_path / f"{split}_formatted.jsonl"
        n = format_file(src, out)
        text = out.read_text(encoding="utf-8")
        assert text == reference_format(src)
        assert n == text.count("\n")


def test_parse_keeps_mr_spacing_and_strips_line():
    assert parse_raw_line(" a : b ||  Text here . \n") == {"context": "a : b ",
                                                           "completion": "  Text here ."}
    assert parse_raw_line("a||b\r\n") == {"context": "a", "completion": "b"}


@pytest.mark.parametrize("content, message", [
    ("a||b\nno separator here\n", r":2: expected one '\|\|' between MR and text, found no"),
    ("a||b||c\n", r":1: expected one '\|\|' .* found 2"),
    ("a||   \n", r":1: empty text after"),
    ("   ||text\n", r":1: empty MR before"),
    ("a||b\n\nc||d\n", r":2: blank line"),
    ("a||b\n   \t\n", r":2: blank line"),
])
def test_raw_line_errors_name_file_and_line(tmp_path, content, message):
    src = write(tmp_path / "bad.txt", content)
    with pytest.raises(E2EDataError, match=re.escape(str(src)) + message):
        read_raw(src)
    with pytest.raises(E2EDataError, match=message):
        format_file(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_invalid_utf8_names_the_line(tmp_path):
    src = write(tmp_path / "bad.txt", "a||b\n".encode() + b"c||caf\xe9\n")
    with pytest.raises(E2EDataError, match=r"bad\.txt:2: invalid UTF-8"):
        read_raw(src)


def test_crlf_and_missing_final_newline(tmp_path):
    src = write(tmp_path / "ok.txt", "a||b\r\nc||d")
    assert read_raw(src) == [{"context": "a", "completion": "b"},
                             {"context": "c", "completion": "d"}]


# ------------------------------------------------------------------------------ encoding
def test_encode_file_follows_gpt2_encode(vocab_dir, tmp_path):
    enc = load_tokenizer(vocab_dir)
    formatted = write(tmp_path / "f.jsonl",
                      json.dumps({"context": "name : Aromi", "completion": "Aromi is nice ."})
                      + "\n")
    for bos, eos in ((True, True), (False, False), (True, False)):
        out = tmp_path / f"e{bos}{eos}.jsonl"
        assert encode_file(formatted, out, enc, add_bos=bos, add_eos=eos) == 1
        record = json.loads(out.read_text())
        assert record["context"] == enc.encode("name : Aromi") + ([EOT_ID] if bos else [])
        assert record["completion"] == enc.encode(" Aromi is nice .") + ([EOT_ID] if eos else [])
    # the leading space is the reference's: " Aromi" is one token, "Aromi" is not
    assert record["completion"][0] == enc.encode(" Aromi")[0]


@pytest.mark.parametrize("line, message", [
    ("{not json", r":2: invalid JSON"),
    ('["a", "b"]', r":2: expected a JSON object, got list"),
    ('{"context": "a"}', r":2: missing key\(s\) \['completion'\]"),
    ('{"context": 1, "completion": "b"}', r":2: 'context' must be a string"),
    ("", r":2: blank line"),
])
def test_formatted_jsonl_errors(tmp_path, line, message):
    src = write(tmp_path / "f.jsonl", '{"context": "a", "completion": "b"}\n' + line + "\n"
                + '{"context": "c", "completion": "d"}\n')
    with pytest.raises(E2EDataError, match=r"f\.jsonl" + message):
        read_formatted(src)


@pytest.mark.parametrize("line, message", [
    ('{"context": [1, 2], "completion": "x"}', r":2: 'completion' must be a non-empty list"),
    ('{"context": [], "completion": [3]}', r":2: 'context' must be a non-empty list"),
    ('{"context": [1, 2.0], "completion": [3]}', r":2: 'context' holds 2.0"),
    ('{"context": [1, true], "completion": [3]}', r":2: 'context' holds True"),
    ('{"context": [1], "completion": [50257]}', r":2: 'completion' holds 50257"),
    ('{"context": [-1], "completion": [3]}', r":2: 'context' holds -1"),
    ('{"completion": [3]}', r":2: missing key"),
    ("[1, 2", r":2: invalid JSON"),
])
def test_read_encoded_errors(tmp_path, line, message):
    src = write(tmp_path / "e.jsonl", '{"context": [1], "completion": [2]}\n' + line + "\n")
    with pytest.raises(E2EDataError, match=r"e\.jsonl" + message):
        read_encoded(src)


def test_read_encoded_returns_pairs(tmp_path):
    src = write(tmp_path / "e.jsonl", '{"context": [1, 50256], "completion": [2, 50256]}\n')
    assert read_encoded(src) == [([1, 50256], [2, 50256])]


# ----------------------------------------------------------------------------- prepare_e2e
def small_e2e(folder, e2e_dir, n=20):
    folder.mkdir(exist_ok=True)
    for split in ("train", "valid", "test"):
        with open(os.path.join(e2e_dir, f"{split}.txt"), encoding="utf-8") as f:
            head = [next(f) for _ in range(n)]
        (folder / f"{split}.txt").write_text("".join(head), encoding="utf-8")
    return folder


def test_prepare_e2e_writes_reference_names_and_skips_fresh(vocab_dir, e2e_dir, tmp_path):
    data, out = small_e2e(tmp_path / "raw", e2e_dir), tmp_path / "out"
    assert prepare_e2e(data, out, vocab_dir=vocab_dir) == ["train", "valid", "test"]
    for split in ("train", "valid", "test"):
        formatted, encoded = split_paths(out, split)
        assert os.path.basename(formatted) == f"{split}_formatted.jsonl"
        assert len(read_formatted(formatted)) == len(read_encoded(encoded)) == 20
    enc = load_tokenizer(vocab_dir)
    first = read_raw(data / "valid.txt")[0]
    assert read_encoded(out / "valid.jsonl")[0] == (
        enc.encode(first["context"]) + [EOT_ID], enc.encode(" " + first["completion"]) + [EOT_ID])
    assert prepare_e2e(data, out, vocab_dir=vocab_dir) == []
    future = time.time_ns() + 10 ** 9
    os.utime(data / "valid.txt", ns=(future, future))
    assert prepare_e2e(data, out, vocab_dir=vocab_dir) == ["valid"]
    os.remove(out / "test.jsonl")
    assert prepare_e2e(data, out, vocab_dir=vocab_dir, splits=("train", "test")) == ["test"]


def test_prepare_e2e_bad_input(vocab_dir, e2e_dir, tmp_path):
    data = small_e2e(tmp_path / "raw", e2e_dir)
    with open(data / "train.txt", "a", encoding="utf-8") as f:
        f.write("broken line without separator\n")
    with pytest.raises(E2EDataError, match=r"train\.txt:21: expected one"):
        prepare_e2e(data, tmp_path / "out", vocab_dir=vocab_dir)
    os.remove(data / "test.txt")
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        prepare_e2e(data, tmp_path / "out", vocab_dir=vocab_dir, splits=("test",))


# -------------------------------------------------------------------------------- paths
def test_resolve_e2e_dir_order_and_errors(e2e_dir, tmp_path, monkeypatch):
    assert resolve_e2e_dir(e2e_dir) == e2e_dir
    monkeypatch.setenv("E2E_DATA_DIR", e2e_dir)
    assert resolve_e2e_dir() == e2e_dir
    (tmp_path / "train.txt").write_text("a||b\n")
    with pytest.raises(DataDirError, match=r"lacks valid\.txt, test\.txt.*download_data\.sh"):
        resolve_e2e_dir(str(tmp_path))
    assert resolve_e2e_dir(str(tmp_path), splits=("train",)) == str(tmp_path)


def test_resolve_vocab_dir_order(vocab_dir, monkeypatch):
    monkeypatch.setenv("GPT2_VOCAB_DIR", vocab_dir)
    assert resolve_vocab_dir("/some/flag") == "/some/flag"
    assert resolve_vocab_dir() == vocab_dir
    monkeypatch.delenv("GPT2_VOCAB_DIR")
    monkeypatch.setattr("shared.runtime.paths.DEFAULT_VOCAB_DIR", "/nonexistent/gpt2")
    assert resolve_vocab_dir() is None
    monkeypatch.setattr("shared.runtime.paths.DEFAULT_VOCAB_DIR", vocab_dir)
    assert resolve_vocab_dir() == vocab_dir
