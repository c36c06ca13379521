"""E2E NLG files, formatted and encoded exactly as microsoft/LoRA's examples/NLG scripts do.

- `format_converting_e2e.py`: a raw line `MR||text` becomes `{"context": MR, "completion": text}`
  (`items = line.strip().split('||')`: the MR keeps its own spacing, the line is stripped).
- `gpt2_encode.py --add_bos --add_eos`: context ids = encode(MR) + [50256], completion ids =
  encode(' ' + text) + [50256].
File names follow the reference: `{split}_formatted.jsonl` and `{split}.jsonl`.

The reference silently mis-reads odd lines; here every malformed line is an `E2EDataError` naming
file and line: no `||` or more than one, an empty MR or text, a blank line, invalid UTF-8 (each
line is decoded on its own so the error can say which), bad JSON, missing keys, bad ids.
"""
from __future__ import annotations

import codecs
import json
import os

from shared.runtime.atomic import atomic_open, write_text
from shared.runtime.paths import E2E_SPLITS, VOCAB_FILES, resolve_vocab_dir
from shared.text.tokenizer import EOT_ID, N_VOCAB, load_tokenizer

SEPARATOR = "||"


class E2EDataError(ValueError):
    """A malformed E2E file; the message starts with `file:line:`."""


# ------------------------------------------------------------------------------ line reading
def _lines(path):
    """(line number, text) of every line of `path`, decoded one by one so errors name the line.

    Splits on \\n, \\r\\n and \\r, as the reference's text-mode `for line in reader` does.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(codecs.BOM_UTF8):  # a byte-order mark is no part of the first MR
        data = data[len(codecs.BOM_UTF8):]
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise E2EDataError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start} "
                               f"({raw[max(0, exc.start - 10):exc.start + 10]!r})") from exc
        if not text.strip():
            raise E2EDataError(f"{path}:{lineno}: blank line (E2E files have one example per "
                               f"line; remove it)")
        yield lineno, text


def _json_lines(path):
    for lineno, text in _lines(path):
        try:
            record = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            raise E2EDataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column "
                               f"{exc.colno})") from exc
        if not isinstance(record, dict):
            raise E2EDataError(f"{path}:{lineno}: expected a JSON object, "
                               f"got {type(record).__name__}")
        missing = [k for k in ("context", "completion") if k not in record]
        if missing:
            raise E2EDataError(f"{path}:{lineno}: missing key(s) {missing}")
        yield lineno, record


# -------------------------------------------------------------------------------- formatting
def parse_raw_line(line: str, where: str = "<line>") -> dict:
    """`MR||text` -> {"context": MR, "completion": text}, as format_converting_e2e.py."""
    items = line.strip().split(SEPARATOR)
    if len(items) != 2:
        what = "none" if len(items) == 1 else f"{len(items) - 1}"
        raise E2EDataError(f"{where}: expected one '{SEPARATOR}' between MR and text, "
                           f"found {what}: {line.strip()[:80]!r}")
    context, completion = items
    if not context.strip():
        raise E2EDataError(f"{where}: empty MR before '{SEPARATOR}'")
    if not completion.strip():
        raise E2EDataError(f"{where}: empty text after '{SEPARATOR}'")
    return {"context": context, "completion": completion}


def read_raw(path) -> list:
    """Every example of a raw E2E file as {"context", "completion"} strings."""
    return [parse_raw_line(text, f"{path}:{lineno}") for lineno, text in _lines(path)]


def format_file(in_txt, out_jsonl) -> int:
    """Write `{split}_formatted.jsonl` from a raw `{split}.txt`; returns the number of lines."""
    records = read_raw(in_txt)
    if not records:
        raise E2EDataError(f"{in_txt}: no examples (the file is empty)")
    with atomic_open(out_jsonl) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")  # json.dumps defaults, byte-equal to the reference
    return len(records)


def read_formatted(path) -> list:
    """{"context", "completion"} strings of a formatted jsonl, checked line by line."""
    records = []
    for lineno, record in _json_lines(path):
        for key in ("context", "completion"):
            if not isinstance(record[key], str):
                raise E2EDataError(f"{path}:{lineno}: {key!r} must be a string, "
                                   f"got {type(record[key]).__name__}")
        records.append(record)
    return records


# ---------------------------------------------------------------------------------- encoding
def encode_record(record, tokenizer, add_bos=True, add_eos=True) -> dict:
    """Ids as gpt2_encode.py: context (+EOT if add_bos), ' ' + completion (+EOT if add_eos)."""
    context = tokenizer.encode(record["context"]) + ([EOT_ID] if add_bos else [])
    completion = tokenizer.encode(" " + record["completion"]) + ([EOT_ID] if add_eos else [])
    return {"context": context, "completion": completion}


def encode_file(in_jsonl, out_jsonl, tokenizer, add_bos=True, add_eos=True) -> int:
    """Write the encoded jsonl of a formatted jsonl; returns the number of lines."""
    records = read_formatted(in_jsonl)
    if not records:
        raise E2EDataError(f"{in_jsonl}: no examples (the file is empty)")
    with atomic_open(out_jsonl) as f:
        for record in records:
            f.write(json.dumps(encode_record(record, tokenizer, add_bos, add_eos)) + "\n")
    return len(records)


def _check_ids(ids, key, where):
    if not isinstance(ids, list) or not ids:
        raise E2EDataError(f"{where}: {key!r} must be a non-empty list of token ids")
    for tok in ids:
        if type(tok) is not int or not 0 <= tok < N_VOCAB:
            raise E2EDataError(f"{where}: {key!r} holds {tok!r}, not a token id in "
                               f"[0, {N_VOCAB})")
    return ids


def read_encoded(path) -> list:
    """(context_ids, completion_ids) of every line of an encoded jsonl; item i is line i + 1."""
    samples = []
    for lineno, record in _json_lines(path):
        where = f"{path}:{lineno}"
        samples.append((_check_ids(record["context"], "context", where),
                        _check_ids(record["completion"], "completion", where)))
    return samples


# ----------------------------------------------------------------------------- whole dataset
def split_paths(out_dir, split):
    """(formatted, encoded) output paths of `split`, named as in the reference."""
    return (os.path.join(out_dir, f"{split}_formatted.jsonl"),
            os.path.join(out_dir, f"{split}.jsonl"))


def prepare_e2e(data_dir, out_dir, vocab_dir=None, splits=E2E_SPLITS) -> list:
    """Format and encode (add_bos + add_eos) each `{split}.txt` of `data_dir` into `out_dir`.

    A split is skipped when both of its outputs are newer than its input (and than the vocab
    files, when a vocab folder is used). Returns the splits that were written.
    """
    vocab_dir = resolve_vocab_dir(vocab_dir)
    vocab_files = [os.path.join(vocab_dir, f) for f in VOCAB_FILES] if vocab_dir else []
    tokenizer = None
    written = []
    for split in splits:
        in_txt = os.path.join(data_dir, f"{split}.txt")
        if not os.path.isfile(in_txt):
            raise FileNotFoundError(f"E2E split file not found: {in_txt}")
        formatted, encoded = split_paths(out_dir, split)
        if _is_fresh([formatted, encoded], [in_txt] + vocab_files):
            continue
        format_file(in_txt, formatted)
        if tokenizer is None:
            tokenizer = load_tokenizer(vocab_dir)
        encode_file(formatted, encoded, tokenizer, add_bos=True, add_eos=True)
        written.append(split)
    return written


def _is_fresh(outputs, inputs):
    if not all(os.path.isfile(p) for p in outputs):
        return False
    oldest_output = min(os.stat(p).st_mtime_ns for p in outputs)
    return all(os.stat(p).st_mtime_ns < oldest_output for p in inputs if os.path.exists(p))


def limit_test_split(data_dir, n_mrs):
    """Keep the lines of the first n distinct MRs of the test split in `data_dir` (smoke runs)."""
    with open(os.path.join(data_dir, "test_formatted.jsonl")) as f:
        formatted = f.readlines()
    with open(os.path.join(data_dir, "test.jsonl")) as f:
        encoded = f.readlines()
    keep, seen = [], []
    for index, line in enumerate(formatted):
        mr = json.loads(line)["context"]
        if mr not in seen:
            if len(seen) == n_mrs:
                break
            seen.append(mr)
        keep.append(index)
    write_text(os.path.join(data_dir, "test_formatted.jsonl"), "".join(formatted[i] for i in keep))
    write_text(os.path.join(data_dir, "test.jsonl"), "".join(encoded[i] for i in keep))
