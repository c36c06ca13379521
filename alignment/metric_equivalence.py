"""Are the two backends' E2E scores the same? Paired bootstrap intervals and a seed band.

`paired_bootstrap` resamples the test MRs (with replacement, >= 1000 times, the same indices for
both systems) and gives each metric's 95% interval of system A - system B. `metric_equivalence`
does it for torch - jittor and, given a second torch run that differs only in its randomness,
for torch - torch: that interval is the seed band, what chance alone moves a score by. The
report says whether the cross-framework difference lies inside it.

Rescoring text 1000 times is too slow for BLEU/NIST (tokenising and n-gram counting ~1 s per
corpus), so each MR is reduced once to sufficient statistics and a resample sums them:
- BLEU: clipped hits and totals per order, hypothesis and closest-reference lengths (exact:
  the corpus score of any resample equals shared.metrics.mteval.bleu on that resample);
- NIST: information-weighted hits and totals per order, hypothesis and mean reference lengths,
  with the information weights held at the full test set's values (a resample changes which
  MRs are scored, not the reference n-gram statistics; exact on the full set, tested);
- ROUGE_L and CIDEr: per-MR scores from pycocoevalcap (CIDEr's document frequencies held at the
  full test set's), whose mean is the corpus score.
METEOR is not bootstrapped: its corpus score is computed inside the Java jar from corpus-wide
alignment statistics that are not exposed per segment, and rescoring 1000 resamples through
the JVM (10-20 s each) would take hours; its observed difference is still reported.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from shared.metrics import mteval

BOOTSTRAP_METRICS = ("BLEU", "NIST", "ROUGE_L", "CIDEr")


# ------------------------------------------------------------------ sufficient statistics
def bleu_statistics(references, hypotheses) -> np.ndarray:
    """(n, 10): hits[1..4], totals[1..4], hypothesis length, closest reference length."""
    rows = []
    for hyp, refs in mteval._prepare(references, hypotheses):
        hits = [sum(mteval.clipped_hits(hyp, refs, n).values()) for n in range(1, 5)]
        totals = [len(hyp) - (n - 1) for n in range(1, 5)]
        rows.append(hits + totals + [len(hyp), mteval._closest_ref_length(len(hyp), refs)])
    return np.array(rows, dtype=np.float64)


def bleu_from_statistics(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU of each row of summed statistics (..., 10), as mteval.bleu."""
    hits, totals = sums[..., 0:4], sums[..., 4:8]
    hyp_len, ref_len = sums[..., 8], sums[..., 9]
    log_p = (np.log(np.maximum(hits, mteval.BLEU_TINY_HITS))
             - np.log(np.maximum(totals, mteval.BLEU_SMALL_TOTAL))).mean(axis=-1)
    brevity = np.where(hyp_len <= ref_len,
                       np.exp(1.0 - ref_len / np.where(hyp_len > 0, hyp_len, 1e-5)), 1.0)
    return brevity * np.exp(log_p)


def nist_statistics(references, hypotheses) -> np.ndarray:
    """(n, 12): info-weighted hits[1..5], totals[1..5], hypothesis length, mean reference length
    (information weights from the whole corpus given)."""
    corpus = mteval._prepare(references, hypotheses)
    ref_counts: Counter = Counter()
    for _, refs in corpus:
        for ref in refs:
            ref_counts[()] += len(ref)
            for n in range(1, mteval.NIST_MAX_N + 1):
                ref_counts.update(mteval.ngram_counts(ref, n))

    def info(ngram):
        count = ref_counts[ngram]
        return math.log2(ref_counts[ngram[:-1]] / count) if count else 0.0

    rows = []
    for hyp, refs in corpus:
        hits = [sum(info(g) * k for g, k in mteval.clipped_hits(hyp, refs, n).items())
                for n in range(1, mteval.NIST_MAX_N + 1)]
        totals = [len(hyp) - (n - 1) for n in range(1, mteval.NIST_MAX_N + 1)]
        rows.append(hits + totals + [len(hyp), sum(len(r) for r in refs) / len(refs)])
    return np.array(rows, dtype=np.float64)


def nist_from_statistics(sums: np.ndarray) -> np.ndarray:
    hits, totals = sums[..., 0:5], sums[..., 5:10]
    per_order = np.where(totals > 0, hits / np.where(totals > 0, totals, 1.0), 0.0)
    score = per_order.sum(axis=-1)
    ratio = np.where(sums[..., 11] > 0, sums[..., 10] / np.where(sums[..., 11] > 0, sums[..., 11], 1), 1.0)
    penalty = np.vectorize(mteval.nist_length_penalty)(ratio)
    return score * penalty


def coco_per_mr(references, hypotheses) -> dict:
    """Per-MR ROUGE_L and CIDEr (pycocoevalcap), PTB-tokenised as shared.metrics.coco does."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from shared.metrics.coco import ptb_tokenize
    flat = [r for refs in references for r in refs]
    tokenized = iter(ptb_tokenize(flat + list(hypotheses)))
    gts = {i: [next(tokenized) for _ in refs] for i, refs in enumerate(references)}
    res = {i: [next(tokenized)] for i in range(len(hypotheses))}
    return {"ROUGE_L": np.asarray(Rouge().compute_score(gts, res)[1], dtype=np.float64),
            "CIDEr": np.asarray(Cider().compute_score(gts, res)[1], dtype=np.float64)}


class CorpusStatistics:
    """One system's per-MR statistics; `scores(indices)` gives every metric per resample."""

    def __init__(self, references, hypotheses, with_coco: bool = True):
        self.bleu = bleu_statistics(references, hypotheses)
        self.nist = nist_statistics(references, hypotheses)
        self.coco = coco_per_mr(references, hypotheses) if with_coco else {}

    def scores(self, indices: np.ndarray) -> dict:
        """indices (R, n) -> {metric: (R,) corpus scores}."""
        out = {"BLEU": bleu_from_statistics(self.bleu[indices].sum(axis=-2)),
               "NIST": nist_from_statistics(self.nist[indices].sum(axis=-2))}
        for name, per_mr in self.coco.items():
            out[name] = per_mr[indices].mean(axis=-1)
        return out


# ------------------------------------------------------------------------------- bootstrap
def paired_bootstrap(a: CorpusStatistics, b: CorpusStatistics, resamples: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """{metric: {"observed": A - B on the full set, "lo", "hi": the interval of A - B}}."""
    n = len(a.bleu)
    if len(b.bleu) != n:
        raise ValueError(f"paired bootstrap needs the same MRs: {n} vs {len(b.bleu)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(resamples, n))
    full = np.arange(n)[None, :]
    sa, sb = a.scores(indices), b.scores(indices)
    fa, fb = a.scores(full), b.scores(full)
    tail = (1.0 - level) / 2 * 100
    out = {}
    for metric in sa:
        d = sa[metric] - sb[metric]
        out[metric] = {"observed": float(fa[metric][0] - fb[metric][0]),
                       "lo": float(np.percentile(d, tail)), "hi": float(np.percentile(d, 100 - tail)),
                       "resamples": resamples}
    return out


def metric_equivalence(references, torch_hyp, jittor_hyp, torch_seed2_hyp=None,
                       resamples: int = 1000, seed: int = 0, with_coco: bool = True) -> dict:
    """torch - jittor intervals, and the seed band (torch - torch of another seed) when given:
    `inside_band` is True when |observed torch - jittor| <= the band's half-width
    max(|lo|, |hi|) of the seed pair's interval."""
    t = CorpusStatistics(references, torch_hyp, with_coco)
    j = CorpusStatistics(references, jittor_hyp, with_coco)
    out = {"cross_framework": paired_bootstrap(t, j, resamples, seed)}
    if torch_seed2_hyp is not None:
        s = CorpusStatistics(references, torch_seed2_hyp, with_coco)
        band = paired_bootstrap(t, s, resamples, seed)
        out["seed_band"] = band
        out["inside_band"] = {m: abs(out["cross_framework"][m]["observed"])
                              <= max(abs(band[m]["lo"]), abs(band[m]["hi"])) for m in band}
    return out


def markdown(result: dict, labels=("torch - jittor", "seed band")) -> str:
    rows = ["| metric | torch - jittor | 95% interval | seed band (95%) | inside band |",
            "|---|---|---|---|---|"]
    cross, band = result["cross_framework"], result.get("seed_band", {})
    for m, r in cross.items():
        b = band.get(m)
        rows.append(f"| {m} | {r['observed']:+.4f} | [{r['lo']:+.4f}, {r['hi']:+.4f}] | "
                     + (f"[{b['lo']:+.4f}, {b['hi']:+.4f}] | {'yes' if result['inside_band'][m] else 'NO'} |"
                        if b else "- | - |"))
    return "\n".join(rows) + "\n"
