"""How far apart two results are: one definition of the differences every comparison reports.

As llm.c serves every comparison with one `check_tensor`, the alignment suite (alignment/
harness.py), the final check of work.sh (scripts/check_alignment.py) and the loss agreement of
two runs (shared/train/trainlog.py) all measure here:
- max_abs: the largest |a - b|;
- max_rel: the largest |a - b| / max(|a|, |b|) over the elements where that magnitude is above
  `floor` (near zero an absolute tolerance governs, and a ratio would only measure rounding);
- rel_l2: ||a - b|| / ||b||, the relative L2 distance from the reference b, which does not blow
  up on single elements near zero.

Whether two results agree within a tolerance is decided in one place too, `agree`, which every
one of those comparisons (and alignment/compare.py's per-tensor check) calls.
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


def agree(a, b, atol: float = 0.0, rtol: float = 0.0, rel_l2: float = None,
          equal_nonfinite: bool = False) -> bool:
    """Whether `a` agrees with the reference `b` (the same shape, else False), by one of two rules:
    - elementwise (rel_l2 None): every |a - b| <= atol + rtol * |b| (numpy.allclose's rule, in
      float64); NaN never agrees, nor do two infinities, unless `equal_nonfinite`, where equal
      values (equal infinities, NaN and NaN) agree;
    - relative L2 (rel_l2 given): difference(a, b).rel_l2 <= rel_l2; NaN never agrees."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    if rel_l2 is not None:
        return bool(difference(a, b).rel_l2 <= rel_l2)
    with np.errstate(invalid="ignore"):
        ok = np.abs(a - b) <= atol + rtol * np.abs(b)
    if equal_nonfinite:
        ok |= (a == b) | (np.isnan(a) & np.isnan(b))
    return bool(np.all(ok))


def beam_agreement(prediction_files) -> dict:
    """How many beam-search predictions two runs share: each file holds one JSON line
    `{"predict": [...]}` per query, in the same order."""
    preds = []
    for path in prediction_files:
        with open(path) as f:
            preds.append([json.loads(line)["predict"] for line in f])
    same = sum(p == q for p, q in zip(*preds))
    return {"identical_predictions": same, "total": len(preds[0])}
