"""Turn beam-search samples into the reference and prediction files the E2E scorer reads.

Follows microsoft/LoRA `examples/NLG/src/gpt2_decode.py`: references are grouped by context (the
MR) in order of first appearance, one prediction per distinct MR, optional `--lower` and
`--tokenize` post-processing applied to both sides.

Inputs:
- the formatted jsonl (`{"context": ..., "completion": ...}` per line), as
  `scripts/format_converting_e2e.py` writes it, read by `shared.text.e2e_data.read_formatted`; a
  record's index is its line number - 1;
- the sample jsonl (`{"id": i, "predict": [token ids, zero-padded]}` per line), where `id` is
  the index of the input record it continues; gpt2_beam.py adds a `query_digest` of the MR's
  tokens (shared/decode/prediction_file.py), checked against the input file's MRs (files without one,
  such as microsoft/LoRA's, are decoded with a warning).
The prediction of an MR is the sample of the MR's first input record, decoded whole and cut at the
first end-of-text, then at the first blank line (the padding id 0 is "!" in GPT-2, so padding
must follow an end-of-text token to vanish, as in LoRA). Samples of other records are checked
but otherwise unused.
"""
from __future__ import annotations

import json
import re
import sys

from shared.runtime.atomic import write_text
from shared.text.e2e_data import read_formatted
from shared.decode.prediction_file import DIGEST_KEY, query_digest

END_OF_TEXT = "<|endoftext|>"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def standard_tokenize(text: str) -> str:
    """LoRA's `stardard_tokenize`: space around every non-word character, whitespace normalised."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def post_process(text: str, tokenize: bool = False, lower: bool = False) -> str:
    if lower:
        text = text.lower()
    if tokenize:
        text = standard_tokenize(text)
    return text


def clean_prediction(text: str) -> str:
    """The generated completion: up to the first end-of-text, then up to the first blank line."""
    return text.split(END_OF_TEXT)[0].split("\n\n")[0].strip()


def one_line(text: str) -> str:
    """Line breaks become spaces: both output files hold exactly one sentence per line."""
    return _LINE_BREAK.sub(" ", text)


def _json_lines(path):
    """(line number, parsed object) of each non-blank line; bad JSON or UTF-8 names file and line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte "
                                 f"{err.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: bad JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, obj


def _field(obj, key, kind, path, lineno):
    if key not in obj:
        raise ValueError(f"{path}:{lineno}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{path}:{lineno}: {key!r} must be {kind.__name__}, "
                         f"got {type(value).__name__}")
    return value


def read_samples(path, num_inputs: int, digests: dict | None = None) -> dict[int, list[int]]:
    """id -> predicted token ids; ids must be unique and index one of `num_inputs` records.
    When `digests` is a dict it receives id -> (query digest or None, line number)."""
    samples, seen_at = {}, {}
    for lineno, obj in _json_lines(path):
        sample_id = _field(obj, "id", int, path, lineno)
        tokens = _field(obj, "predict", list, path, lineno)
        if not 0 <= sample_id < num_inputs:
            raise ValueError(f"{path}:{lineno}: id {sample_id} is out of range (the input file "
                             f"has {num_inputs} records, ids 0..{num_inputs - 1})")
        if sample_id in seen_at:
            raise ValueError(f"{path}:{lineno}: id {sample_id} already given on line "
                             f"{seen_at[sample_id]}")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ValueError(f"{path}:{lineno}: 'predict' must be a list of token ids")
        samples[sample_id] = tokens
        seen_at[sample_id] = lineno
        if digests is not None:
            digest = obj.get(DIGEST_KEY)
            if digest is not None and not isinstance(digest, str):
                raise ValueError(f"{path}:{lineno}: {DIGEST_KEY!r} must be a string")
            digests[sample_id] = (digest, lineno)
    return samples


def check_digests(records: list[dict], digests: dict, tokenizer, input_path, sample_path) -> bool:
    """Each sample's query digest must be that of its input record's MR; False when the file
    carries none (microsoft/LoRA's files, or ours before digests): nothing could be checked."""
    if not any(digest for digest, _ in digests.values()):
        return False
    by_context: dict[str, str] = {}
    for sample_id, (digest, lineno) in sorted(digests.items()):
        context = records[sample_id]["context"]
        if context not in by_context:
            by_context[context] = query_digest(tokenizer.encode(context))
        if digest is None:
            raise ValueError(f"{sample_path}:{lineno}: no {DIGEST_KEY!r}, while other lines "
                             f"have one")
        if digest != by_context[context]:
            raise ValueError(
                f"{sample_path}:{lineno}: id {sample_id} was not generated from line "
                f"{sample_id + 1} of {input_path} (MR {context!r}): its query digest differs, "
                f"so the sample file was made from another input file (or vocabulary)")
    return True


def group_references(records: list[dict], input_path="input file",
                     tokenize: bool = False, lower: bool = False) -> dict[str, list[str]]:
    """MR -> its post-processed references, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for index, rec in enumerate(records):
        ref = one_line(post_process(rec["completion"].strip(), tokenize, lower)).strip()
        if not ref:
            raise ValueError(f"{input_path}:{index + 1}: empty completion; the reference file "
                             "cannot hold an empty reference (an empty line separates groups)")
        groups.setdefault(rec["context"], []).append(ref)
    return groups


def decode_predictions(records: list[dict], samples: dict[int, list[int]], tokenizer,
                       sample_path="sample file", tokenize: bool = False,
                       lower: bool = False) -> list[str]:
    """One post-processed prediction per distinct MR, from the MR's first input record."""
    first_index: dict[str, int] = {}
    for index, rec in enumerate(records):
        first_index.setdefault(rec["context"], index)
    predictions = []
    for context, index in first_index.items():
        if index not in samples:
            raise ValueError(f"{sample_path}: no sample with id {index}, the first input record "
                             f"(line {index + 1}) of MR {context!r}")
        try:
            text = clean_prediction(tokenizer.decode(samples[index]))
        except ValueError as err:  # e.g. a token id outside the vocabulary
            raise ValueError(f"{sample_path}: sample id {index}: {err}") from None
        predictions.append(one_line(post_process(text, tokenize, lower)).strip())
    return predictions


def write_reference_file(path, groups: list[list[str]]) -> None:
    write_text(path, "\n\n".join("\n".join(refs) for refs in groups) + "\n")


def write_prediction_file(path, predictions: list[str]) -> None:
    write_text(path, "".join(p + "\n" for p in predictions))


def decode_files(input_file, sample_file, tokenizer, output_ref_file, output_pred_file,
                 tokenize: bool = False, lower: bool = False) -> int:
    """Write both files; returns the number of distinct MRs."""
    records = read_formatted(input_file)
    if not records:
        raise ValueError(f"{input_file}: no records")
    digests: dict = {}
    samples = read_samples(sample_file, len(records), digests)
    if not check_digests(records, digests, tokenizer, input_file, sample_file):
        print(f"warning: {sample_file} has no query digests (written by microsoft/LoRA or an "
              f"older version of gpt2_beam.py): cannot check that it was generated from "
              f"{input_file}", file=sys.stderr)
    groups = group_references(records, input_file, tokenize, lower)
    predictions = decode_predictions(records, samples, tokenizer, sample_file, tokenize, lower)
    write_reference_file(output_ref_file, list(groups.values()))
    write_prediction_file(output_pred_file, predictions)
    return len(predictions)
