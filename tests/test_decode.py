"""Beam samples -> reference/prediction files (LoRA's gpt2_decode.py semantics)."""
import json
import os
import subprocess
import sys

import pytest

from shared.decode.scorer_files import (clean_prediction, decode_files, post_process, read_samples,
                                        standard_tokenize)
from shared.text.e2e_data import format_file
from shared.metrics import measure_scores, read_predictions, read_references
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("text, tokenized", [
    ("Hello, world!", "Hello , world !"),
    ("it's 5-star  food", "it ' s 5 - star food"),
    ("Café (cheap)", "Café ( cheap )"),  # \W is Unicode-aware: accented letters are word chars
    ("  ", ""),
])
def test_standard_tokenize(text, tokenized):
    assert standard_tokenize(text) == tokenized


def test_post_process_lower_and_tokenize():
    assert post_process("The Eagle, Café.", tokenize=True, lower=True) == "the eagle , café ."
    assert post_process("The Eagle, Café.") == "The Eagle, Café."


@pytest.mark.parametrize("text, cleaned", [
    (" The pub.<|endoftext|>!!!!", "The pub."),
    (" The pub.\n\nName: other<|endoftext|>", "The pub."),
    (" A\n\nB<|endoftext|>", "A"),
    ("<|endoftext|> after", ""),
    (" no end at all ", "no end at all"),
])
def test_clean_prediction(text, cleaned):
    assert clean_prediction(text) == cleaned


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(vocab_dir):
    return load_tokenizer(vocab_dir)


def sample(tokenizer, i, text, pad=3):
    """What the beam search writes: the completion's ids, end-of-text, zero padding."""
    return {"id": i, "predict": tokenizer.encode(text) + [EOT_ID] + [0] * pad}


INPUTS = [{"context": "name : Aromi | area : riverside", "completion": " Aromi is by the river. "},
          {"context": "name : Aromi | area : riverside", "completion": "Aromi: riverside."},
          {"context": "name : Café Bleu", "completion": "Café Bleu, a café."},
          {"context": "name : Aromi | area : riverside", "completion": "Riverside Aromi."}]


def test_decode_files_groups_by_mr_and_uses_first_record(tmp_path, tokenizer):
    inputs = write_jsonl(tmp_path / "in.jsonl", INPUTS)
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        sample(tokenizer, 2, " Café Bleu\nserves food.\n\nname : junk"),  # order is free
        sample(tokenizer, 0, " Aromi is near the river."),
        sample(tokenizer, 3, " ignored: not the MR's first record"),
    ])
    ref, pred = tmp_path / "ref.txt", tmp_path / "pred.txt"
    assert decode_files(inputs, samples, tokenizer, ref, pred) == 2
    assert ref.read_text(encoding="utf-8") == (
        "Aromi is by the river.\nAromi: riverside.\nRiverside Aromi.\n\nCafé Bleu, a café.\n")
    # the single newline of a prediction becomes a space: one line per MR
    assert pred.read_text(encoding="utf-8") == "Aromi is near the river.\nCafé Bleu serves food.\n"
    assert read_references(str(ref))[1] == ["Café Bleu, a café."]


def test_decode_files_lower_and_tokenize_both_sides(tmp_path, tokenizer):
    inputs = write_jsonl(tmp_path / "in.jsonl", INPUTS[2:3])
    samples = write_jsonl(tmp_path / "samples.jsonl", [sample(tokenizer, 0, " Café Bleu, cheap.")])
    ref, pred = tmp_path / "ref.txt", tmp_path / "pred.txt"
    decode_files(inputs, samples, tokenizer, ref, pred, tokenize=True, lower=True)
    assert ref.read_text(encoding="utf-8") == "café bleu , a café .\n"
    assert pred.read_text(encoding="utf-8") == "café bleu , cheap .\n"


def test_empty_prediction_is_an_empty_line_and_scores(tmp_path, tokenizer):
    inputs = write_jsonl(tmp_path / "in.jsonl", INPUTS[:3])
    samples = write_jsonl(tmp_path / "samples.jsonl", [
        {"id": 0, "predict": [EOT_ID, 0, 0]}, sample(tokenizer, 2, " Café Bleu, a café.")])
    ref, pred = tmp_path / "ref.txt", tmp_path / "pred.txt"
    decode_files(inputs, samples, tokenizer, ref, pred)
    assert read_predictions(str(pred)) == ["", "Café Bleu, a café."]
    scores = measure_scores(str(ref), str(pred), meteor=False)
    # ROUGE_L: the empty prediction scores 0, the exact one 1. (BLEU comes out above 1 here:
    # the empty hypothesis takes 3 from the 4-gram total, as in the official scorer.)
    assert scores["ROUGE_L"] == pytest.approx(0.5, abs=1e-12)
    assert scores["BLEU"] > 0 and scores["CIDEr"] > 0


@pytest.mark.parametrize("rows, message", [
    ([{"id": 1, "predict": [1]}], r"no sample with id 0, the first input record \(line 1\)"),
    ([{"id": 0, "predict": [1]}, {"id": 4, "predict": [1]}],
     r"samples\.jsonl:2: id 4 is out of range"),
    ([{"id": 0, "predict": [1]}, {"id": 0, "predict": [2]}],
     r"samples\.jsonl:2: id 0 already given on line 1"),
    ([{"id": 0}], r"samples\.jsonl:1: missing key 'predict'"),
    ([{"id": "0", "predict": [1]}], r"samples\.jsonl:1: 'id' must be int"),
    ([{"id": 0, "predict": [50257]}], r"samples\.jsonl: sample id 0: token id 50257"),
])
def test_sample_errors_name_file_and_line(tmp_path, tokenizer, rows, message):
    inputs = write_jsonl(tmp_path / "in.jsonl", INPUTS)
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        decode_files(inputs, samples, tokenizer, tmp_path / "r.txt", tmp_path / "p.txt")
    assert not (tmp_path / "r.txt").exists()


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": 0, "predict": [1]}\n\n{"id": 1, "predict": [1\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"samples\.jsonl:3: bad JSON"):
        read_samples(str(path), num_inputs=4)


def test_gpt2_decode_script_on_the_e2e_test_split(tmp_path, vocab_dir, e2e_dir, tokenizer):
    """Samples that reproduce each line's own completion: every MR's prediction is then its
    first reference, and the 630 MRs of the official test split come out in order."""
    formatted = tmp_path / "test_formatted.jsonl"
    format_file(os.path.join(e2e_dir, "test.txt"), str(formatted))
    records = [json.loads(line) for line in formatted.read_text(encoding="utf-8").splitlines()]
    write_jsonl(tmp_path / "samples.jsonl",
                [sample(tokenizer, i, " " + r["completion"]) for i, r in enumerate(records)])
    ref, pred = tmp_path / "ref.txt", tmp_path / "pred.txt"
    subprocess.run([sys.executable, "scripts/gpt2_decode.py", "--vocab", vocab_dir,
                    "--sample_file", str(tmp_path / "samples.jsonl"),
                    "--input_file", str(formatted), "--output_ref_file", str(ref),
                    "--output_pred_file", str(pred)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    groups, predictions = read_references(str(ref)), read_predictions(str(pred))
    assert len(records) == 4693 and len(groups) == len(predictions) == 630
    assert sum(map(len, groups)) == 4693
    assert predictions == [g[0] for g in groups]
    assert groups[0][0] == records[0]["completion"].strip()
