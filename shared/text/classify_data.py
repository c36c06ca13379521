"""Text classification data (SMS spam: `label<TAB>text` lines), its splits, batches and metrics.

- Reading: every line must be `label<TAB>text` with a known label and non-empty text; a bad line
  stops with `file:line` (nothing is dropped silently). The file may end with blank lines.
- Splits: by seed, per class (stratified), train/valid/test fractions (default 0.7/0.1/0.2);
  every split must hold every class (else training learns one answer and the scores mislead).
- Class balance: `undersample` keeps as many examples of each class as the rarest class has
  (drawn by seed, before the split, as the source projects do: every split is then balanced);
  `class_weights` keeps everything and weights the training loss by n / (classes * n_class);
  `none` does neither.
- Batches: token ids cut to `max_len` (counted and reported, never silent), padded with
  <|endoftext|> to the longest in the batch; `length` gives each row's real length, whose last
  token's hidden state the classifier reads (`fixed_width`: padded to `max_len` instead, one
  shape for every batch). Training order in epoch e is a permutation from
  `numpy.random.default_rng([seed, e])` (resumable); evaluation is sequential.
- Metrics (positive class: the last label, "spam"): accuracy, precision, recall, F1 and the
  confusion matrix rows = true label, columns = predicted label.
"""
from __future__ import annotations

import os

import numpy as np

from shared.runtime.utf8_file import read_utf8
from shared.text.seeded_batches import SeededBatches

LABELS = ("ham", "spam")
PAD_ID = 50256
BALANCE_MODES = ("undersample", "class_weights", "none")
SPLITS = ("train", "valid", "test")


class ClassifyDataError(ValueError):
    """Classification data that cannot be used; the message names file and line."""


def read_labelled(path, labels=LABELS) -> list:
    """[(label index, text, line number)] of a `label<TAB>text` file."""
    path = os.fspath(path)
    text = read_utf8(path, ClassifyDataError, "data file")
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    examples = []
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if "\t" not in line:
            raise ClassifyDataError(f"{path}:{number}: no tab; expected `label<TAB>text`")
        label, body = line.split("\t", 1)
        if label not in labels:
            raise ClassifyDataError(f"{path}:{number}: unknown label {label!r}; expected one of "
                                    f"{list(labels)}")
        if not body.strip():
            raise ClassifyDataError(f"{path}:{number}: empty text after the tab")
        examples.append((labels.index(label), body, number))
    if not examples:
        raise ClassifyDataError(f"{path}: no examples")
    return examples


def undersample(examples, seed) -> list:
    """As many examples of each class as the rarest class has, drawn by seed; file order kept."""
    by_class = _by_class(examples)
    keep_n = min(len(v) for v in by_class.values())
    rng = np.random.default_rng([int(seed), 1])
    kept = []
    for label in sorted(by_class):
        indices = by_class[label]
        kept += [indices[i] for i in sorted(rng.choice(len(indices), keep_n, replace=False))]
    return [examples[i] for i in sorted(kept)]


def _by_class(examples) -> dict:
    out = {}
    for index, (label, _, _) in enumerate(examples):
        out.setdefault(label, []).append(index)
    return out


def split_examples(examples, seed, fractions=(0.7, 0.1, 0.2)) -> dict:
    """{"train", "valid", "test"} lists, stratified by class, shuffled by seed."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ClassifyDataError(f"split fractions must be three positive numbers summing to 1, "
                                f"got {fractions}")
    rng = np.random.default_rng([int(seed), 2])
    parts = {name: [] for name in SPLITS}
    for label, indices in sorted(_by_class(examples).items()):
        order = [indices[i] for i in rng.permutation(len(indices))]
        n_train = int(round(len(order) * fractions[0]))
        n_valid = int(round(len(order) * fractions[1]))
        parts["train"] += order[:n_train]
        parts["valid"] += order[n_train:n_train + n_valid]
        parts["test"] += order[n_train + n_valid:]
    out = {}
    for name, indices in parts.items():
        if not indices:
            raise ClassifyDataError(f"the {name} split is empty ({len(examples)} examples): give "
                                    f"more data or other fractions")
        out[name] = [examples[i] for i in sorted(indices)]
    return out


def class_weights(examples, num_classes=len(LABELS)) -> list:
    """n / (classes * n_class): each class contributes equally to the weighted loss."""
    counts = np.bincount([label for label, _, _ in examples], minlength=num_classes)
    if (counts == 0).any():
        raise ClassifyDataError(f"a class has no training example (counts {counts.tolist()})")
    return (counts.sum() / (num_classes * counts)).tolist()


def prepare_splits(path, seed, balance, fractions=(0.7, 0.1, 0.2)):
    """Read, balance and split; returns (splits, class weights or None)."""
    if balance not in BALANCE_MODES:
        raise ClassifyDataError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
    examples = read_labelled(path)
    file_counts = np.bincount([e[0] for e in examples], minlength=len(LABELS))
    for label, count in zip(LABELS, file_counts):
        if not count:  # training would learn one answer and score accuracy 1, F1 0
            raise ClassifyDataError(f"{path}: no {label!r} example, so the train, valid and "
                                    f"test splits have none; a classifier needs every class "
                                    f"{list(LABELS)}")
    if balance == "undersample":
        examples = undersample(examples, seed)
    splits = split_examples(examples, seed, fractions)
    for name, part in splits.items():
        counts = np.bincount([e[0] for e in part], minlength=len(LABELS))
        for label, count, in_file in zip(LABELS, counts, file_counts):
            if not count:
                raise ClassifyDataError(
                    f"{path}: the {name} split has no {label!r} example ({in_file} in the file, "
                    f"split {','.join(f'{f:g}' for f in fractions)}, balance {balance}): give "
                    f"more {label!r} examples or other split fractions")
    weights = class_weights(splits["train"]) if balance == "class_weights" else None
    return splits, weights


class ClassifyDataset(SeededBatches):
    """Encoded (ids, label) examples batched for the trainer (`FTDataset`'s interface, the
    order of shared/text/seeded_batches.py)."""

    def __init__(self, examples, tokenizer, batch_size, max_len, name="data", fixed_width=False):
        if batch_size < 1 or max_len < 1:
            raise ClassifyDataError(f"batch_size and max_len must be >= 1, got {batch_size}, "
                                    f"{max_len}")
        self.name, self.batch_size, self.max_len = name, batch_size, max_len
        self.source = name  # the trainer's messages name the dataset by it
        self.fixed_width = fixed_width  # pad every batch to max_len (one shape: Jittor compiles once)
        self.ids, self.labels, self.lines, self.truncated = [], [], [], []
        for label, text, line in examples:
            ids = tokenizer.encode(text)
            if not ids:
                raise ClassifyDataError(f"{name}: line {line} encodes to no tokens")
            if len(ids) > max_len:
                self.truncated.append(line)
                ids = ids[:max_len]
            self.ids.append(ids)
            self.labels.append(label)
            self.lines.append(line)
        if not self.ids:
            raise ClassifyDataError(f"{name}: no examples")
        self.num_examples = len(self.ids)

    def truncation_report(self) -> str:
        if not self.truncated:
            return ""
        return (f"{self.name}: {len(self.truncated)} of {self.num_examples} texts are longer than "
                f"max_len {self.max_len} tokens and lose their end (first: line "
                f"{self.truncated[0]})")

    def completion_report(self) -> str:
        """A loud warning when most texts are cut (the head reads a token inside the text, not
        its end, for most of the examples), or ""."""
        if 2 * len(self.truncated) <= self.num_examples:
            return ""
        return (f"WARNING: {self.name}: {len(self.truncated)} of {self.num_examples} texts are "
                f"cut at max_len {self.max_len} tokens (first: line {self.truncated[0]}): the "
                f"head never sees their end. Raise --max_len.")

    def keeps_no_completion(self) -> bool:
        """True when every text is cut: no example shows the classifier a whole text."""
        return len(self.truncated) == self.num_examples

    def no_completion_error(self) -> str:
        return (f"{self.name}: every one of the {self.num_examples} texts is longer than "
                f"--max_len {self.max_len} tokens and would be classified from its beginning "
                f"only (first: line {self.truncated[0]}). Raise --max_len")

    def collate(self, indices) -> dict:
        width = self.max_len if self.fixed_width else max(len(self.ids[i]) for i in indices)
        inputs = np.full((len(indices), width), PAD_ID, dtype=np.int64)
        for row, i in enumerate(indices):
            inputs[row, :len(self.ids[i])] = self.ids[i]
        return {"input": inputs,
                "length": np.array([len(self.ids[i]) for i in indices], dtype=np.int64),
                "label": np.array([self.labels[i] for i in indices], dtype=np.int64)}


def classification_metrics(true_labels, predicted, num_classes=len(LABELS), labels=LABELS) -> dict:
    """Accuracy, and precision/recall/F1 of the positive (last) class, with the confusion matrix."""
    y, p = np.asarray(true_labels), np.asarray(predicted)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"need equal, non-empty label arrays, got {y.shape} and {p.shape}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y, p), 1)
    positive = num_classes - 1
    tp = int(confusion[positive, positive])
    fp = int(confusion[:, positive].sum()) - tp
    fn = int(confusion[positive, :].sum()) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": int(y.size), "accuracy": float((y == p).mean()), "precision": precision,
            "recall": recall, "f1": f1, "positive_label": labels[positive],
            "labels": list(labels), "confusion_matrix": confusion.tolist()}
