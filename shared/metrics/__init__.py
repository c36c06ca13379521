"""The official E2E NLG metrics (BLEU, NIST, METEOR, ROUGE_L, CIDEr), as `measure_scores.py -p`.

`mteval` holds BLEU/NIST (Python mteval-v13a port), `coco` METEOR/ROUGE_L/CIDEr through
pycocoevalcap, `e2e` the file formats and the corpus-level entry points re-exported here.
"""
from shared.metrics.e2e import (SCORE_NAMES, format_scores, measure_scores, read_predictions,
                                read_references, score_corpus)

__all__ = ["SCORE_NAMES", "format_scores", "measure_scores", "read_predictions",
           "read_references", "score_corpus"]
