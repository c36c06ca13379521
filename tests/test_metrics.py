"""E2E metrics against values worked out by hand (BLEU, NIST, ROUGE_L, CIDEr) and against
pycocoevalcap used directly (METEOR, ROUGE_L, CIDEr). METEOR starts a JVM that loads a
paraphrase table (~6 s), so only one test runs it."""
import json
import math
import os
import subprocess
import sys

import pytest

from shared.metrics import coco, mteval
from shared.metrics.e2e import (format_scores, measure_scores, read_predictions,
                                read_references, score_corpus)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- tokenisation
@pytest.mark.parametrize("text, tokens", [
    # rule 1: <skipped>, hyphen before a newline, newlines, SGML escapes
    ("a <skipped> b", ["a", "b"]),
    ("co-\noperate", ["cooperate"]),
    ("two\nlines", ["two", "lines"]),
    ("&quot;hi&quot; &amp; &lt;b&gt;", ['"', "hi", '"', "&", "<", "b", ">"]),
    # rule 3: each ASCII punctuation range, and what is not in them (' and - stay inside words)
    ("a{b|c}d~e", ["a", "{", "b", "|", "c", "}", "d", "~", "e"]),
    ("a[b\\c]d^e_f`g", ["a", "[", "b", "\\", "c", "]", "d", "^", "e", "_", "f", "`", "g"]),
    ('a!b"c#d$e%f&g', ["a", "!", "b", '"', "c", "#", "d", "$", "e", "%", "f", "&", "g"]),
    ("(a)*b+c", ["(", "a", ")", "*", "b", "+", "c"]),
    ("a:b;c<d=e>f?g@h/i", ["a", ":", "b", ";", "c", "<", "d", "=", "e", ">", "f", "?", "g",
                           "@", "h", "/", "i"]),
    ("it's family-friendly", ["it's", "family-friendly"]),
    # rule 4: period/comma split off non-digits only
    ("the end.", ["the", "end", "."]),
    ("a,b", ["a", ",", "b"]),
    ("3.5 and 1,000", ["3.5", "and", "1,000"]),
    ("price 20.", ["price", "20", "."]),
    # rule 5: dash after a digit
    ("20-25 pounds", ["20", "-", "25", "pounds"]),
    ("a-5", ["a-5"]),
    # rule 6: whitespace runs (any Unicode whitespace) collapse; nothing left -> one empty
    # token, as the official scorer's split(" ") gives (tests/test_mteval_official.py)
    ("  a \t b\u00a0c  ", ["a", "b", "c"]),
    ("", [""]),
    ("   ", [""]),
    # non-ASCII stays inside tokens, case is kept by tokenize itself
    ("Café £20 日本", ["Café", "£20", "日本"]),
])
def test_tokenize_rules(text, tokens):
    assert mteval.tokenize(text) == tokens


def test_clipped_hits_use_the_single_reference_with_most_occurrences():
    hyp = "the the the the".split()
    # "the" occurs once in each reference: clipped to 1 (the max), not 2 (the sum)
    assert mteval.clipped_hits(hyp, ["the cat".split(), "the mat".split()], 1) == {("the",): 1}
    assert mteval.clipped_hits(hyp, ["the the cat".split(), "the".split()], 1) == {("the",): 2}


# ------------------------------------------------------------------------------------- BLEU
REFS_2 = [["the cat is on the mat", "there is a cat on the mat"],
          ["a dog is running", "the dog runs fast"]]
HYPS_2 = ["the cat sat on the mat", "a dog is running fast"]


def test_bleu_identical_is_one():
    assert mteval.bleu([["The cat sat on the mat ."]], ["the cat sat on the mat."]) == 1.0


def test_bleu_two_instances_by_hand():
    # instance 1, hyp "the cat sat on the mat" (6 tokens), refs of 6 and 7 tokens:
    #   1-grams: the x2 (ref 1 has 2), cat, on, mat hit; sat misses -> 5 / 6
    #   2-grams: the cat, on the, the mat -> 3 / 5;  3-grams: on the mat -> 1 / 4;  4-grams 0 / 3
    #   closest reference length: 6
    # instance 2, hyp "a dog is running fast" (5), refs of 4 and 4 tokens:
    #   1-grams: a dog is running (ref 1), fast (ref 2) -> 5 / 5; 2-grams: a dog, dog is,
    #   is running -> 3 / 4; 3-grams: a dog is, dog is running -> 2 / 3; 4-grams 1 / 2; ref len 4
    # corpus: 10/11, 6/9, 3/7, 1/5; hyp length 11 > ref length 10 -> no brevity penalty
    expected = (10 / 11 * 6 / 9 * 3 / 7 * 1 / 5) ** 0.25
    assert mteval.bleu(REFS_2, HYPS_2) == pytest.approx(expected, abs=1e-6)


def test_bleu_brevity_penalty_and_case_insensitivity():
    # all n-grams of the 4-token hypothesis match; the reference has 8 tokens (with ".")
    # -> BLEU = exp(1 - 8/4) = e^-1
    got = mteval.bleu([["The CAT sat on the big mat ."]], ["the cat SAT on"])
    assert got == pytest.approx(math.exp(-1), abs=1e-6)


def test_bleu_clipping_and_zero_hit_floor():
    # hyp "the the the the": 1-gram hits clipped to 1 of 4; no 2/3/4-gram hits (floored at
    # 1e-15) out of 3, 2, 1; closest ref length 2 < 4 -> no penalty
    expected = (1 / 4 * 1e-15 / 3 * 1e-15 / 2 * 1e-15 / 1) ** 0.25
    got = mteval.bleu([["the cat", "the mat"]], ["the the the the"])
    assert got == pytest.approx(expected, rel=1e-9)


def test_bleu_tie_in_closest_reference_length_goes_to_the_shorter():
    # hyp has 5 tokens, refs 6 and 4 (both 1 away): the 4-token one counts -> no penalty.
    # (Taking the longer would give exp(1 - 6/5) = 0.8187.)
    refs = [["one two three four five six", "one two three four"]]
    assert mteval.bleu(refs, ["one two three four five"]) == pytest.approx(1.0, abs=1e-12)


def test_bleu_totals_are_not_floored_per_instance():
    # hyp 1 = its 7-token reference: hits 7, 6, 5, 4; hyp 2 "x" (ref "x y"): hits 1, 0, 0, 0.
    # totals add len - (n - 1) per instance: (7 + 1, 6 + 0, 5 - 1, 4 - 2) = (8, 6, 4, 2), so the
    # 4-gram precision is 4/2. Lengths 8 vs 7 + 2 -> penalty exp(1 - 9/8).
    refs = [["a b c d e f g"], ["x y"]]
    expected = (8 / 8 * 6 / 6 * 5 / 4 * 4 / 2) ** 0.25 * math.exp(1 - 9 / 8)
    assert mteval.bleu(refs, ["a b c d e f g", "x"]) == pytest.approx(expected, abs=1e-9)


def test_bleu_of_empty_hypotheses_is_zero_without_error():
    # each empty hypothesis is one empty token; the floors keep BLEU defined and tiny. The
    # official scorer (e2e-metrics pymteval) prints 1.7395944730633454e-09 for this corpus.
    assert mteval.bleu([["a b"], ["c d"]], ["", ""]) == pytest.approx(1.7395944730633454e-09,
                                                                      rel=1e-12)


# ------------------------------------------------------------------------------------- NIST
def test_nist_two_instances_by_hand():
    # reference counts over all 4 references (21 tokens): the 4, is 3, cat on mat a dog 2,
    # there running runs fast 1; info(w) = log2(21 / count(w)).
    # 1-gram hits: inst 1 the x2, cat, on, mat; inst 2 a, dog, is, running, fast; total 11
    sum1 = (2 * math.log2(21 / 4) + 3 * math.log2(21 / 2)
            + 2 * math.log2(21 / 2) + math.log2(21 / 3) + 2 * math.log2(21))
    # 2-grams: the cat log2(4/1)=2, on the log2(2/2)=0, the mat log2(4/2)=1,
    # a dog log2(2/1)=1, dog is log2(2/1)=1, is running log2(3/1); total 9
    sum2 = 2 + 0 + 1 + 1 + 1 + math.log2(3)
    # 3-, 4-gram hits (on the mat, a dog is, dog is running, a dog is running) each occur as
    # often as their prefix -> info 0; no 5-gram hits. Length: 11 tokens vs mean reference
    # lengths 6.5 + 4 = 10.5 -> no penalty.
    expected = sum1 / 11 + sum2 / 9
    assert mteval.nist(REFS_2, HYPS_2) == pytest.approx(expected, abs=1e-6)


def test_nist_length_penalty_is_one_half_at_two_thirds():
    # ref "the cat sat": info(the) = info(cat) = log2(3), info(the cat) = log2(1/1) = 0;
    # 1-grams: 2 log2(3) / 2 tokens; 2-grams 0 / 1; orders 3..5 have no n-gram (total <= 0)
    # ratio 2/3: exp(-beta ln(2/3)^2) = exp(ln 0.5) = 0.5
    assert mteval.nist([["the cat sat"]], ["the cat"]) == pytest.approx(0.5 * math.log2(3),
                                                                        abs=1e-9)
    assert mteval.nist_length_penalty(2 / 3) == pytest.approx(0.5, abs=1e-12)


def test_nist_of_empty_hypotheses_is_zero_without_error():
    assert mteval.nist([["a b"], ["c d"]], ["", ""]) == 0.0


def test_mteval_rejects_mismatched_corpus():
    with pytest.raises(ValueError, match="2 reference groups but 1 hypotheses"):
        mteval.bleu([["a"], ["b"]], ["a"])


# --------------------------------------------------------------------- ROUGE_L, CIDEr, METEOR
def test_rouge_l_by_hand():
    # inst 1: LCS("the cat sat down", "the sat down") = 3 -> P = 1, R = 3/4,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 2.44 * 0.75 / 2.19; inst 2 identical -> 1
    refs = [["the cat sat down"], ["a red apple"]]
    got = coco.coco_scores(refs, ["the sat down", "a red apple"], meteor=False)
    assert got["METEOR"] is None
    assert got["ROUGE_L"] == pytest.approx((2.44 * 0.75 / 2.19 + 1) / 2, abs=1e-6)


def test_cider_by_hand():
    # 2 instances -> idf of an n-gram in one instance's references = ln 2 - ln 1 = ln 2.
    # inst 1 identical "red apple": 1-gram and 2-gram cosines 1, 3-/4-grams empty (0);
    #   mean over n = 0.5, x10 = 5.
    # inst 2 "green plum" vs "green pear": 1-grams share only "green": ln2^2 / (sqrt2 ln2)^2 =
    #   0.5; bigram misses; same bigram count -> no length penalty; mean 0.125, x10 = 1.25
    refs = [["red apple"], ["green pear"]]
    got = coco.coco_scores(refs, ["red apple", "green plum"], meteor=False)
    assert got["CIDEr"] == pytest.approx((5 + 1.25) / 2, abs=1e-6)


MIXED_REFS = [["The Café serves French food.", "Café is a French place (£20-25)."],
              ["There is a pub near the river.", "A riverside pub."],
              ["Loch Fyne is family-friendly.", "Loch Fyne welcomes kids"]]
MIXED_HYPS = ["the café serves french food", "", "Loch Fyne is kid friendly."]


def test_coco_scores_match_pycocoevalcap_used_directly():
    """Includes an empty prediction and non-ASCII text; the only test that runs METEOR."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    got = coco.coco_scores(MIXED_REFS, MIXED_HYPS, meteor=True)

    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in refs]
                                   for i, refs in enumerate(MIXED_REFS)})
    res = {i: [""] for i in range(3)}
    res.update(PTBTokenizer().tokenize({i: [{"caption": h}] for i, h in enumerate(MIXED_HYPS)
                                        if h}))
    assert res[0] == ["the café serves french food"]
    meteor = Meteor()
    try:
        assert got["METEOR"] == pytest.approx(meteor.compute_score(gts, res)[0], abs=1e-9)
        assert meteor.compute_score({0: ["a café"]}, {0: ["a café"]})[0] == 1.0
    finally:
        meteor.__del__()
    assert 0 < got["METEOR"] < 1
    assert got["ROUGE_L"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)


def test_ptb_tokenize_keeps_one_line_per_sentence():
    # U+2028 and a vertical tab are line breaks to Java; empty sentences never reach it
    got = coco.ptb_tokenize(["a\u2028b", "", "Café, (cheap)!", "c\x0bd", ""])
    assert got == ["a b", "", "café -lrb- cheap -rrb-", "c d", ""]


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="PTB tokeniser.*no 'java' is on PATH"):
        coco.coco_scores([["a b"]], ["a b"], meteor=False)


# ------------------------------------------------------------------------- files and script
def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_read_references_groups_and_trailing_blank_lines(tmp_path):
    path = write(tmp_path / "ref.txt", " a one \na two\n\nb one\n\n\n")
    assert read_references(path) == [["a one", "a two"], ["b one"]]


def test_read_references_rejects_an_empty_group(tmp_path):
    path = write(tmp_path / "ref.txt", "a one\n\n\nb one\n")
    with pytest.raises(ValueError, match=r"ref\.txt:3: empty line"):
        read_references(path)


def test_read_predictions_keeps_empty_lines(tmp_path):
    path = write(tmp_path / "pred.txt", "first \n\nthird\n\n")
    assert read_predictions(path) == ["first", "", "third", ""]


def test_count_mismatch_names_both_files_and_counts(tmp_path):
    ref = write(tmp_path / "ref.txt", "a\n\nb\n")
    pred = write(tmp_path / "pred.txt", "a\n")
    with pytest.raises(ValueError, match=r"ref\.txt has 2 reference groups but .*pred\.txt has "
                                         r"1 predictions"):
        measure_scores(ref, pred, meteor=False)


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "pred.txt"
    path.write_bytes(b"ok\n\xff bad\n")
    with pytest.raises(ValueError, match=r"pred\.txt:2: not valid UTF-8"):
        read_predictions(str(path))


def test_empty_predictions_and_non_ascii_score_without_error():
    scores = score_corpus(MIXED_REFS, ["", "", ""], meteor=False)
    assert scores.pop("BLEU") < 1e-6  # floored, not zero (see test_bleu_of_empty_hypotheses...)
    assert scores == { "NIST": 0.0, "METEOR": None, "ROUGE_L": 0.0, "CIDEr": 0.0}


def test_format_scores_lines():
    text = format_scores({"BLEU": 0.70403, "NIST": 8.5, "METEOR": None, "ROUGE_L": 0.72,
                          "CIDEr": 2.41234})
    assert text.splitlines()[:5] == ["BLEU: 0.7040", "NIST: 8.5000", "METEOR: skipped",
                                     "ROUGE_L: 0.7200", "CIDEr: 2.4123"]
    assert "NIST" in text.splitlines()[5] and "-p" in text.splitlines()[5]


def test_measure_scores_script(tmp_path):
    ref = write(tmp_path / "ref.txt", "the cat sat on the mat\nthe cat is on the mat\n\n"
                                      "a dog runs\n\n")
    pred = write(tmp_path / "pred.txt", "the cat sat on the mat\na dog runs\n")
    out = tmp_path / "scores.json"
    proc = subprocess.run([sys.executable, "scripts/measure_scores.py", ref, pred, "-p",
                           "--no_meteor", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert "BLEU: 1.0000" in proc.stdout and "METEOR: skipped" in proc.stdout
    scores = json.loads(out.read_text())
    assert scores["BLEU"] == 1.0 and scores["METEOR"] is None and scores["ROUGE_L"] == 1.0
    bad = subprocess.run([sys.executable, "scripts/measure_scores.py", ref, ref, "--no_meteor"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "reference groups but" in bad.stderr
