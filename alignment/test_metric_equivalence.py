"""Paired bootstrap of metric differences (alignment.metric_equivalence) on the committed CPU runs'
predictions against the E2E-offline test references: torch vs jittor of the --framework_dropout
run (their masks differ, so do their beams), and that run's torch against the default run's torch
(same base, other dropout masks) as the seed band."""
import os
import shutil

import numpy as np
import pytest

from alignment.metric_equivalence import (CorpusStatistics, bleu_from_statistics, bleu_statistics,
                                          metric_equivalence, nist_from_statistics,
                                          nist_statistics, paired_bootstrap)
from shared.decode.scorer_files import group_references
from shared.text.e2e_data import read_raw
from shared.metrics import mteval
from shared.metrics.e2e import read_predictions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = 80  # MRs: enough for the checks, seconds on 2 cores


@pytest.fixture(scope="module")
def corpus(e2e_dir):
    refs = list(group_references(read_raw(os.path.join(e2e_dir, "test.txt"))).values())
    preds = {name: read_predictions(os.path.join(ROOT, "logs", run, f"{backend}_e2e_pred.txt"))
             for name, run, backend in (("torch", "cpu-framework-dropout", "torch"),
                                        ("jittor", "cpu-framework-dropout", "jittor"),
                                        ("torch2", "cpu-default", "torch"))}
    return refs[:SUBSET], {k: v[:SUBSET] for k, v in preds.items()}


def test_statistics_reproduce_the_corpus_scores(corpus):
    refs, preds = corpus
    for hyp in preds.values():
        assert bleu_from_statistics(bleu_statistics(refs, hyp).sum(0)) == pytest.approx(
            mteval.bleu(refs, hyp), rel=1e-12)
        assert nist_from_statistics(nist_statistics(refs, hyp).sum(0)) == pytest.approx(
            mteval.nist(refs, hyp), rel=1e-12)
    # a resample's BLEU from summed statistics equals rescoring that resample's text
    idx = np.random.default_rng(3).integers(0, len(refs), len(refs))
    hyp = preds["torch"]
    stats = bleu_statistics(refs, hyp)
    assert bleu_from_statistics(stats[idx].sum(0)) == pytest.approx(
        mteval.bleu([refs[i] for i in idx], [hyp[i] for i in idx]), rel=1e-12)


def test_identical_systems_have_a_zero_interval(corpus):
    refs, preds = corpus
    a = CorpusStatistics(refs, preds["torch"], with_coco=False)
    out = paired_bootstrap(a, a, resamples=1000)
    assert all(r["lo"] == r["hi"] == r["observed"] == 0.0 for r in out.values())


def test_intervals_contain_the_observed_difference_and_the_band_is_reported(corpus):
    refs, preds = corpus
    out = metric_equivalence(refs, preds["torch"], preds["jittor"], preds["torch2"],
                             resamples=1000, with_coco=False)
    for metric in ("BLEU", "NIST"):
        r = out["cross_framework"][metric]
        assert r["lo"] < r["hi"] and r["resamples"] == 1000
        assert r["lo"] - 1e-12 <= r["observed"] <= r["hi"] + 1e-12 or abs(r["observed"]) < 0.05
        assert metric in out["seed_band"] and isinstance(out["inside_band"][metric], bool)
    with pytest.raises(ValueError, match="same MRs"):
        paired_bootstrap(CorpusStatistics(refs, preds["torch"], False),
                         CorpusStatistics(refs[:-1], preds["torch"][:-1], False))


@pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenisation needs Java")
def test_rouge_and_cider_per_mr_means_match_the_corpus_scores(corpus):
    from shared.metrics.coco import coco_scores
    refs, preds = corpus
    stats = CorpusStatistics(refs[:30], preds["torch"][:30])
    full = stats.scores(np.arange(30)[None, :])
    expected = coco_scores(refs[:30], preds["torch"][:30], meteor=False)
    assert full["ROUGE_L"][0] == pytest.approx(expected["ROUGE_L"], rel=1e-9)
    assert full["CIDEr"][0] == pytest.approx(expected["CIDEr"], rel=1e-9)
