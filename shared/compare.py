"""How far apart two results are: one definition of the differences every comparison reports.

As llm.c serves every comparison with one `check_tensor`, the alignment suite (alignment/
harness.py), the final check of work.sh (scripts/check_alignment.py) and the loss agreement of
two runs (shared/trainlog.py) all measure here:
- max_abs: the largest |a - b|;
- max_rel: the largest |a - b| / max(|a|, |b|) over the elements where that magnitude is above
  `floor` (near zero an absolute tolerance governs, and a ratio would only measure rounding);
- rel_l2: ||a - b|| / ||b||, the relative L2 distance from the reference b, which does not blow
  up on single elements near zero.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

TINY = np.finfo(np.float64).tiny


def relative(diff, a, b, floor: float = TINY):
    """|diff| relative to the larger magnitude of a and b (elementwise; the floor avoids 0/0)."""
    return np.abs(diff) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


@dataclass
class Difference:
    max_abs: float
    max_rel: float
    rel_l2: float


def difference(a, b, floor: float = TINY) -> Difference:
    """The differences of `a` from the reference `b` (same shape), in float64; NaN propagates
    into max_abs and rel_l2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = np.abs(a - b)
    if diff.size == 0:
        return Difference(0.0, 0.0, 0.0)
    big = np.maximum(np.abs(a), np.abs(b)) > floor
    max_rel = float(relative(diff[big], a[big], b[big]).max()) if big.any() else 0.0
    norm = float(np.linalg.norm(b))
    return Difference(float(diff.max()), max_rel,
                      float(np.linalg.norm(a - b)) / (norm if norm > 0 else 1.0))


def beam_agreement(prediction_files) -> dict:
    """How many beam-search predictions two runs share: each file holds one JSON line
    `{"predict": [...]}` per query, in the same order."""
    preds = []
    for path in prediction_files:
        with open(path) as f:
            preds.append([json.loads(line)["predict"] for line in f])
    same = sum(p == q for p, q in zip(*preds))
    return {"identical_predictions": same, "total": len(preds[0])}
