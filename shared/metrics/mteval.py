"""Corpus BLEU and NIST as the E2E scorer computes them in its Python mode (`measure_scores.py -p`).

The scorer ports mteval-v13a to Python; its numbers differ from sacrebleu's (tokeniser, smoothing)
and its NIST differs from the Perl mteval's, so both are written out here from the algorithm in
`/work/shared/specs/e2e-metrics.md`.

As in the official scorer, a hypothesis shorter than n lowers the corpus n-gram total
(len - n + 1 < 0 is not floored per instance): with very short or empty hypotheses in a small
corpus, a precision, and BLEU, can exceed 1. On real outputs the effect is negligible.

Inputs are plain strings: `references[i]` is the list of reference sentences of instance `i`,
`hypotheses[i]` its system output. Text is tokenised by `tokenize`, then compared lowercased.
"""
from __future__ import annotations

import math
import re
from collections import Counter

BLEU_MAX_N = 4
NIST_MAX_N = 5
BLEU_TINY_HITS = 1e-15    # floor for a zero hit count: log() stays finite, BLEU becomes ~0
BLEU_SMALL_TOTAL = 1e-9   # floor for an n-gram total that is not positive
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # penalty 0.5 at 2/3 of the reference length

_SGML_ESCAPES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
_PUNCTUATION = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([\.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_WHITESPACE = re.compile(r"\s+")


def tokenize(text: str) -> list[str]:
    """mteval-v13a tokenisation (the 'western language' rules), keeping case.

    Only ASCII punctuation is split off; any other character (accents, CJK, the pound sign)
    stays inside its token. Runs of any Unicode whitespace count as one separator. An empty or
    whitespace-only text is one empty token, as in the official scorer (it splits the stripped
    text on " "): an empty hypothesis adds 1 to the length and to the unigram total.
    """
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for escaped, char in _SGML_ESCAPES:
        text = text.replace(escaped, char)
    text = f" {text} "
    text = _PUNCTUATION.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return text.split(" ")


def ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def clipped_hits(hyp: list[str], refs: list[list[str]], n: int) -> Counter:
    """Hypothesis n-grams found in the references, each counted at most as often as it occurs
    in the single reference that has it most often (not the sum over references)."""
    max_ref_counts: Counter = Counter()
    for ref in refs:
        max_ref_counts |= ngram_counts(ref, n)  # `|` keeps the maximum of each count
    return ngram_counts(hyp, n) & max_ref_counts  # `&` keeps the minimum


def _lowercase_tokens(text: str) -> list[str]:
    """Tokenise first, then lowercase: `<skipped>` and the SGML escapes are case-sensitive."""
    return [token.lower() for token in tokenize(text)]


def _prepare(references, hypotheses) -> list[tuple[list[str], list[list[str]]]]:
    """Tokenise and lowercase; check the corpus shape once for both scores."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference groups but {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("cannot score an empty corpus")
    corpus = []
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"instance {i}: references must be a non-empty list of strings")
        corpus.append((_lowercase_tokens(hyp), [_lowercase_tokens(ref) for ref in refs]))
    return corpus


def _closest_ref_length(hyp_len: int, refs: list[list[str]]) -> int:
    """Length of the reference closest in length to the hypothesis; ties go to the shorter."""
    return min((abs(len(ref) - hyp_len), len(ref)) for ref in refs)[1]


def bleu(references, hypotheses) -> float:
    """Corpus BLEU-4 as a fraction in [0, 1]."""
    corpus = _prepare(references, hypotheses)
    hits = [0] * BLEU_MAX_N
    totals = [0] * BLEU_MAX_N
    hyp_len = ref_len = 0
    for hyp, refs in corpus:
        for n in range(1, BLEU_MAX_N + 1):
            hits[n - 1] += sum(clipped_hits(hyp, refs, n).values())
            totals[n - 1] += len(hyp) - (n - 1)  # may be <= 0 for a short hypothesis
        hyp_len += len(hyp)
        ref_len += _closest_ref_length(len(hyp), refs)
    log_precision = sum(math.log(max(h, BLEU_TINY_HITS) / max(t, BLEU_SMALL_TOTAL))
                        for h, t in zip(hits, totals)) / BLEU_MAX_N
    brevity = 1.0
    if hyp_len <= ref_len:
        brevity = math.exp(1.0 - ref_len / (hyp_len or 1e-5))
    return brevity * math.exp(log_precision)


def nist_length_penalty(ratio: float) -> float:
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def nist(references, hypotheses) -> float:
    """Corpus NIST-5 of the Python mteval port (not the Perl mteval's value)."""
    corpus = _prepare(references, hypotheses)
    # Information weights: n-gram counts over every reference sentence of the corpus; the
    # "empty prefix" of a unigram counts all reference tokens.
    ref_counts: Counter = Counter()
    for _, refs in corpus:
        for ref in refs:
            ref_counts[()] += len(ref)
            for n in range(1, NIST_MAX_N + 1):
                ref_counts.update(ngram_counts(ref, n))

    def info(ngram):
        count = ref_counts[ngram]
        return math.log2(ref_counts[ngram[:-1]] / count) if count else 0.0

    score = 0.0
    for n in range(1, NIST_MAX_N + 1):
        weighted_hits = sum(info(g) * k for hyp, refs in corpus
                            for g, k in clipped_hits(hyp, refs, n).items())
        total = sum(len(hyp) - (n - 1) for hyp, _ in corpus)
        if total > 0:  # a corpus too short for n-grams of this order gains nothing from them
            score += weighted_hits / total
    hyp_len = sum(len(hyp) for hyp, _ in corpus)
    mean_ref_len = sum(sum(len(ref) for ref in refs) / len(refs) for _, refs in corpus)
    ratio = hyp_len / mean_ref_len if mean_ref_len else 1.0
    return score * nist_length_penalty(ratio)
