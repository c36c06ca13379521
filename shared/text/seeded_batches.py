"""The batch order of the task datasets (text windows, classification texts, preference pairs)
that shared/train/trainer.py reads through `FTDataset`'s interface.

A subclass holds `num_examples` and `batch_size` and turns a list of example indices into a
batch with `collate(indices)`. Training order in epoch e (counted from 1) is the permutation
`numpy.random.default_rng([seed, e])`, cut into batches (the last one may be short), so a resumed
run that starts at `start_batch` sees the batches the uninterrupted run saw; evaluation batches
are sequential.
"""
from __future__ import annotations

import math

import numpy as np


class SeededBatches:
    """`train_batches` and `eval_batches` over a subclass's `collate(indices)`."""
    num_examples: int
    batch_size: int

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def collate(self, indices) -> dict:
        raise NotImplementedError

    def train_order(self, epoch: int, seed: int) -> list:
        """The example indices of epoch `epoch` (from 1) in training order."""
        if epoch < 1:
            raise ValueError(f"epochs count from 1, got {epoch}")
        return np.random.default_rng([seed, epoch]).permutation(self.num_examples).tolist()

    def train_batches(self, epoch, seed, start_batch=0):
        order = self.train_order(epoch, seed)
        for b in range(start_batch, self.num_batches):
            yield self.collate(order[b * self.batch_size:(b + 1) * self.batch_size])

    def eval_batches(self):
        for start in range(0, self.num_examples, self.batch_size):
            yield self.collate(range(start, min(start + self.batch_size, self.num_examples)))
