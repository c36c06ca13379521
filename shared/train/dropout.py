"""Backend-neutral dropout masks for exact training alignment with dropout on.

Each framework's dropout draws from its own RNG, so two backends with dropout on diverge after
the first step. With `SharedDropout`, each LoRA layer instead multiplies its input by a mask
drawn from numpy, keyed by (seed, training step, layer): both backends drop the same units, and
a resumed run draws the same masks as an uninterrupted one. Under N processes
(shared/train/data_parallel.py) each rank draws the global batch's mask and keeps its own rows,
so the masks are those of one process at the global batch.
"""
import numpy as np


class SharedDropout:
    def __init__(self, p: float, seed: int, rows=None):
        """`rows`: (first row, global rows) of this rank's share of each batch; None: all."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p, self.seed, self.step = float(p), int(seed), 0
        self.rows = rows

    def set_step(self, step: int):
        self.step = int(step)

    def mask(self, layer_index: int, shape) -> np.ndarray:
        """Inverted-dropout mask: 0 with probability p, else 1/(1-p); float32."""
        rng = np.random.default_rng([self.seed, self.step, int(layer_index)])
        if self.rows is None:
            keep = rng.random(shape, dtype=np.float32) >= self.p
        else:  # the global batch's mask, this rank's rows
            first, total = self.rows
            keep = rng.random((total,) + tuple(shape[1:]), dtype=np.float32) >= self.p
            keep = keep[first:first + shape[0]]
        return keep.astype(np.float32) * np.float32(1.0 / (1.0 - self.p))
