"""shared/text/tokenizer.py against an independent transcription of OpenAI's GPT-2 `encoder.py`.

`OriginalGPT2Encoder` below re-implements gpt-2/src/encoder.py (the encoder microsoft/LoRA's
gpt2_encode.py uses) in plain Python with the `regex` package; tiktoken must agree with it token
for token, on hand-picked strings and on real E2E lines through the whole `prepare_e2e` pipeline.
"""
import json
import os
import random
import shutil
from functools import lru_cache

import pytest
import regex

from shared.text import tokenizer as tok
from shared.text.e2e_data import prepare_e2e, read_encoded
from shared.text.tokenizer import EOT_ID, VocabError, load_tokenizer


# ------------------------------------------------------------- the original, transcribed
def bytes_to_unicode():
    """Printable unicode stand-ins for the 256 bytes, as in encoder.py."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    return {(word[i], word[i + 1]) for i in range(len(word) - 1)}


class OriginalGPT2Encoder:
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, vocab_dir):
        with open(os.path.join(vocab_dir, "encoder.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(os.path.join(vocab_dir, "vocab.bpe"), encoding="utf-8") as f:
            bpe_data = f.read()
        merges = [tuple(line.split()) for line in bpe_data.split("\n")[1:-1]]
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        pairs = get_pairs(word)
        if not pairs:
            return token
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        bpe_tokens = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            bpe_tokens.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return bpe_tokens

    def decode(self, tokens):
        text = "".join(self.decoder[t] for t in tokens)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


@lru_cache(maxsize=None)
def original_encoder(vocab_dir):
    return OriginalGPT2Encoder(vocab_dir)


TRICKY = [
    "Hello", " the", "\n\n", "hello world", "  leading two", " leading one", "trailing ",
    "trailing two  ", "double  space inside", "tabs\tand\nnewlines\n\nand \n \n mixed",
    "line\r\nwindows", "punctuation!?... (yes) [no] {x}: a;b,c", "--- ===", "digits 123 4567 89.5",
    "12345678901234567890", "it's he'll they're we've I'm she'd don't can't 'S 'LL", "'s'll",
    "café naïve résumé", "日本語のテキスト", "emoji 😀👍🏽 mixed", "£20-25 price range",
    "<|endoftext|>", "text<|endoftext|>more", " <|endoftext|> ", "", " ", "   ", "\n",
    "name : The Eagle | eatType : coffee shop | food : French",
    "ünïcödé ΑΒΓ αβγ ДЖЗ", "\u00a0nbsp\u00a0", "a\u200bb zero-width",
]


def real_lines(e2e_dir, per_split=60, seed=0):
    rng = random.Random(seed)
    lines = []
    for split in ("train", "valid", "test"):
        with open(os.path.join(e2e_dir, f"{split}.txt"), encoding="utf-8") as f:
            split_lines = f.read().splitlines()
        lines += rng.sample(split_lines, per_split)
    return lines


# ------------------------------------------------------------------------------ equality
@pytest.mark.parametrize("text", TRICKY)
def test_encode_equals_original_on_tricky_strings(vocab_dir, text):
    assert load_tokenizer(vocab_dir).encode(text) == original_encoder(vocab_dir).encode(text)


def test_encode_equals_original_on_real_lines(vocab_dir, e2e_dir):
    enc, ref = load_tokenizer(vocab_dir), original_encoder(vocab_dir)
    for line in real_lines(e2e_dir):
        mr, text = line.strip().split("||")
        for s in (line, mr, " " + text):
            assert enc.encode(s) == ref.encode(s), s


def test_literal_ids_from_encoder_json(vocab_dir):
    enc = load_tokenizer(vocab_dir)
    assert enc.encode(" the") == [262]
    assert enc.encode("\n\n") == [628]
    assert enc.encode("Hello") == [15496]
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("\n") == [198]
    # special-token text is ordinary text: '<', '|', 'end', 'of', 'text', '|', '>'
    assert enc.encode("<|endoftext|>") == [27, 91, 437, 1659, 5239, 91, 29]
    assert EOT_ID not in enc.encode("<|endoftext|>")


def test_decode_round_trip_and_special_ids(vocab_dir):
    enc, ref = load_tokenizer(vocab_dir), original_encoder(vocab_dir)
    for text in TRICKY:
        assert enc.decode(enc.encode(text)) == text
    assert enc.decode([EOT_ID]) == "<|endoftext|>"
    assert enc.decode([15496, EOT_ID, 262]) == "Hello<|endoftext|> the"
    # a lone UTF-8 lead byte 0xC3 (stand-in character 'Ã') decodes to U+FFFD like the original
    lone = [ref.encoder[bytes_to_unicode()[0xC3]]]
    assert enc.decode(lone) == ref.decode(lone) == "\ufffd"
    with pytest.raises(ValueError, match="50257"):
        enc.decode([50257])
    with pytest.raises(ValueError, match="-1"):
        enc.decode([-1])


def test_prepare_e2e_matches_original_encoder(vocab_dir, e2e_dir, tmp_path):
    """All of valid and a sample of train/test through format + encode, against the original."""
    written = prepare_e2e(e2e_dir, tmp_path, vocab_dir=vocab_dir)
    assert written == ["train", "valid", "test"]
    ref = original_encoder(vocab_dir)
    rng = random.Random(1)
    for split, sample in (("valid", None), ("train", 300), ("test", 300)):
        with open(os.path.join(e2e_dir, f"{split}.txt"), encoding="utf-8") as f:
            raw = f.read().splitlines()
        encoded = read_encoded(tmp_path / f"{split}.jsonl")
        assert len(encoded) == len(raw)
        rows = range(len(raw)) if sample is None else rng.sample(range(len(raw)), sample)
        for i in rows:
            items = raw[i].strip().split("||")
            expected = (ref.encode(items[0]) + [EOT_ID], ref.encode(" " + items[1]) + [EOT_ID])
            assert encoded[i] == expected, f"{split}.txt line {i + 1}"


# ------------------------------------------------------------------------- loading paths
def test_cached_per_folder_and_env_fallback(vocab_dir, monkeypatch):
    first = load_tokenizer(vocab_dir)
    assert load_tokenizer(vocab_dir) is first
    monkeypatch.setenv("GPT2_VOCAB_DIR", vocab_dir)
    assert load_tokenizer() is first


def test_without_vocab_dir_uses_tiktoken_gpt2(monkeypatch):
    monkeypatch.delenv("GPT2_VOCAB_DIR", raising=False)
    monkeypatch.setattr(tok, "resolve_vocab_dir", lambda flag=None: None)
    asked = []
    monkeypatch.setattr(tok.tiktoken, "get_encoding", lambda name: asked.append(name) or "ENC")
    monkeypatch.setattr(tok, "_cache", {})
    tokenizer = load_tokenizer()
    assert asked == ["gpt2"] and tokenizer.encoding == "ENC"


# ---------------------------------------------------------------------------- bad vocabs
@pytest.fixture
def vocab_copy(vocab_dir, tmp_path):
    dest = tmp_path / "gpt2"
    dest.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(vocab_dir, name), dest / name)
    return dest


def _rewrite(path, edit):
    text = path.read_text(encoding="utf-8")
    path.write_text(edit(text), encoding="utf-8")


def test_copied_vocab_loads(vocab_copy):
    assert load_tokenizer(str(vocab_copy)).encode(" the") == [262]


def test_missing_folder_and_files(vocab_copy, tmp_path):
    with pytest.raises(VocabError, match="folder not found"):
        load_tokenizer(str(tmp_path / "nowhere"))
    os.remove(vocab_copy / "vocab.bpe")
    with pytest.raises(VocabError, match=r"vocab\.bpe"):
        load_tokenizer(str(vocab_copy))


def test_bad_json(vocab_copy):
    _rewrite(vocab_copy / "encoder.json", lambda t: t[:-10])
    with pytest.raises(VocabError, match=r"encoder\.json: invalid JSON"):
        load_tokenizer(str(vocab_copy))


def test_wrong_number_of_entries(vocab_copy):
    enc = json.loads((vocab_copy / "encoder.json").read_text(encoding="utf-8"))
    enc.pop("Ġthe")
    (vocab_copy / "encoder.json").write_text(json.dumps(enc), encoding="utf-8")
    with pytest.raises(VocabError, match=r"encoder\.json: has 50256 entries"):
        load_tokenizer(str(vocab_copy))


def test_not_an_object(vocab_copy):
    (vocab_copy / "encoder.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(VocabError, match=r"encoder\.json: expected a JSON object"):
        load_tokenizer(str(vocab_copy))


def test_unparsable_merge(vocab_copy):
    _rewrite(vocab_copy / "vocab.bpe", lambda t: t.replace("\nĠ t\n", "\nĠt\n", 1))
    with pytest.raises(VocabError, match=r"vocab\.bpe:2: a merge is two tokens"):
        load_tokenizer(str(vocab_copy))


def test_missing_header_and_truncated_merges(vocab_copy):
    bpe = vocab_copy / "vocab.bpe"
    original = bpe.read_text(encoding="utf-8")
    bpe.write_text(original.split("\n", 1)[1], encoding="utf-8")
    with pytest.raises(VocabError, match=r"vocab\.bpe:1: expected a '#version'"):
        load_tokenizer(str(vocab_copy))
    bpe.write_text(original[:-1], encoding="utf-8")
    with pytest.raises(VocabError, match="does not end with a newline"):
        load_tokenizer(str(vocab_copy))
    bpe.write_text(original.rsplit("\n", 2)[0] + "\n", encoding="utf-8")
    with pytest.raises(VocabError, match=r"has 49999 merges"):
        load_tokenizer(str(vocab_copy))


def test_merges_out_of_order(vocab_copy):
    lines = (vocab_copy / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    (vocab_copy / "vocab.bpe").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(VocabError, match=r"vocab\.bpe:2: merge .* should produce token id 256"):
        load_tokenizer(str(vocab_copy))


def test_edited_file_is_reloaded_not_served_stale(vocab_copy):
    assert load_tokenizer(str(vocab_copy)).encode(" the") == [262]
    _rewrite(vocab_copy / "encoder.json", lambda t: t[:-10])
    os.utime(vocab_copy / "encoder.json", ns=(1, 1))  # a different version, whatever the clock
    with pytest.raises(VocabError, match="invalid JSON"):
        load_tokenizer(str(vocab_copy))
