"""GPT-2 byte-level BPE through tiktoken, token-for-token equal to OpenAI's original `encoder.py`.

microsoft/LoRA encodes E2E with that original encoder (`gpt2_encode.py`), which knows no special
tokens: the text "<|endoftext|>" is split like any other text, and only the pipeline appends the
id 50256 itself. `encode` therefore uses tiktoken's `encode_ordinary`. Decoding joins the bytes of
all tokens and decodes them with errors='replace', as the original does.

The vocabulary comes from an explicit folder (encoder.json + vocab.bpe, checked with errors that
name the file), else from `paths.resolve_vocab_dir()`, else from tiktoken's own "gpt2" download.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from shared.runtime.paths import resolve_vocab_dir

EOT_ID = 50256
EOT_TEXT = "<|endoftext|>"
N_VOCAB = 50257
N_BYTE_TOKENS = 256
# The split pattern of OpenAI's gpt-2/src/encoder.py, verbatim (tiktoken's r50k pattern is an
# equivalent rewrite; keeping the original leaves nothing to argue about).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

VOCAB_HINT = ("give --vocab or set GPT2_VOCAB_DIR to a folder with encoder.json and vocab.bpe "
              "(`bash scripts/download_data.sh` fetches them)")

_cache: dict = {}
_lock = threading.Lock()


class VocabError(ValueError):
    """A GPT-2 vocabulary file that is missing or malformed; the message names the file."""


class GPT2Tokenizer:
    """`encode(text) -> list[int]` and `decode(ids) -> str` over a tiktoken Encoding."""

    eot_id = EOT_ID
    n_vocab = N_VOCAB

    def __init__(self, encoding: tiktoken.Encoding, source: str):
        self.encoding = encoding
        self.source = source  # the vocab folder, or "tiktoken:gpt2"

    def encode(self, text: str) -> list:
        """Ids of `text`; special-token text is encoded as ordinary text (as the original)."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids) -> str:
        """Text of `ids`; EOT_ID gives "<|endoftext|>", broken UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < N_VOCAB]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the GPT-2 vocabulary [0, {N_VOCAB})")
        return self.encoding.decode(ids, errors="replace")

    def __repr__(self):
        return f"GPT2Tokenizer(source={self.source!r})"


def load_tokenizer(vocab_dir=None) -> GPT2Tokenizer:
    """The GPT-2 tokenizer from `vocab_dir`, else `resolve_vocab_dir()`, else tiktoken's "gpt2".

    Built encodings are cached per folder and file version (building one takes a while).
    """
    vocab_dir = resolve_vocab_dir(vocab_dir)
    if vocab_dir is None:
        key = "tiktoken:gpt2"
        with _lock:
            if key not in _cache:
                try:
                    _cache[key] = GPT2Tokenizer(tiktoken.get_encoding("gpt2"), key)
                except Exception as exc:  # noqa: BLE001 - offline: requests' errors, and others
                    raise VocabError(
                        f"cannot load the GPT-2 vocabulary: no vocab folder was found and "
                        f"tiktoken's download failed ({type(exc).__name__}: {exc}); "
                        f"{VOCAB_HINT}") from exc
            return _cache[key]
    encoder_path, bpe_path = _vocab_paths(vocab_dir)
    key = (os.path.realpath(vocab_dir),) + tuple(
        (os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (encoder_path, bpe_path))
    with _lock:
        if key not in _cache:
            _cache[key] = GPT2Tokenizer(_build_encoding(encoder_path, bpe_path), vocab_dir)
        return _cache[key]


def _vocab_paths(vocab_dir):
    if not os.path.isdir(vocab_dir):
        raise VocabError(f"GPT-2 vocab folder not found: {vocab_dir} "
                         f"(run `bash scripts/download_data.sh` or set GPT2_VOCAB_DIR)")
    paths = tuple(os.path.join(vocab_dir, name) for name in ("encoder.json", "vocab.bpe"))
    for path in paths:
        if not os.path.isfile(path):
            raise VocabError(f"GPT-2 vocab file missing: {path} "
                             f"(run `bash scripts/download_data.sh` or set GPT2_VOCAB_DIR)")
    return paths


def _build_encoding(encoder_path, bpe_path) -> tiktoken.Encoding:
    encoder = _read_encoder(encoder_path)
    merges = _read_merges(bpe_path)
    _check_consistent(encoder, merges, encoder_path, bpe_path)
    try:
        with _tiktoken_cache_disabled():
            ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=bpe_path,
                                                    encoder_json_file=encoder_path)
    except (AssertionError, KeyError, ValueError) as exc:
        raise VocabError(f"{encoder_path} and {bpe_path} do not form a GPT-2 vocabulary "
                         f"({type(exc).__name__}: {exc})") from exc
    return tiktoken.Encoding(name=f"gpt2@{os.path.dirname(encoder_path)}", pat_str=GPT2_PATTERN,
                             mergeable_ranks=ranks, special_tokens={EOT_TEXT: EOT_ID},
                             explicit_n_vocab=N_VOCAB)


@contextlib.contextmanager
def _tiktoken_cache_disabled():
    """tiktoken caches even local files under a key made of their *path* and would hand back a
    stale copy after the file changes; an empty TIKTOKEN_CACHE_DIR turns that cache off."""
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def _read_text(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VocabError(f"{path}: not UTF-8 text ({exc})") from exc


def _read_encoder(path) -> dict:
    try:
        encoder = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise VocabError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from exc
    if not isinstance(encoder, dict):
        raise VocabError(f"{path}: expected a JSON object of token -> id, "
                         f"got {type(encoder).__name__}")
    if len(encoder) != N_VOCAB:
        raise VocabError(f"{path}: has {len(encoder)} entries, GPT-2 has {N_VOCAB}")
    if sorted(v for v in encoder.values() if isinstance(v, int)) != list(range(N_VOCAB)):
        raise VocabError(f"{path}: ids are not exactly 0..{N_VOCAB - 1}, each once")
    if encoder.get(EOT_TEXT) != EOT_ID:
        raise VocabError(f"{path}: {EOT_TEXT!r} must have id {EOT_ID}, "
                         f"has {encoder.get(EOT_TEXT)!r}")
    return encoder


def _read_merges(path) -> list:
    lines = _read_text(path).split("\n")
    if not lines[0].startswith("#version"):
        raise VocabError(f"{path}:1: expected a '#version' header line, got {lines[0][:40]!r}")
    if lines[-1] != "":
        raise VocabError(f"{path}: does not end with a newline (truncated file?)")
    merges = []
    for lineno, line in enumerate(lines[1:-1], start=2):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise VocabError(f"{path}:{lineno}: a merge is two tokens separated by one space, "
                             f"got {line!r}")
        merges.append(tuple(parts))
    expected = N_VOCAB - N_BYTE_TOKENS - 1
    if len(merges) != expected:
        raise VocabError(f"{path}: has {len(merges)} merges, GPT-2 has {expected}")
    return merges


def _check_consistent(encoder, merges, encoder_path, bpe_path):
    """BPE applies merges by rank, so merge i must produce the token with id 256 + i."""
    for i, (first, second) in enumerate(merges):
        if encoder.get(first + second) != N_BYTE_TOKENS + i:
            raise VocabError(
                f"{bpe_path}:{i + 2}: merge {first!r} + {second!r} should produce token id "
                f"{N_BYTE_TOKENS + i} of {encoder_path}, which has "
                f"{encoder.get(first + second)!r} for it")
