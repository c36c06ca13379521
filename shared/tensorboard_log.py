"""`--tensorboard DIR`: the training log's records also written as TensorBoard scalars.

The JSON-lines log (`shared/trainlog.py`) stays the record of a run; this tee adds an event file
in DIR (tensorboardX's `SummaryWriter`: TFRecord framing with masked CRC32C and Event/Summary
protobufs, the format TensorBoard reads) with `train/loss`, `train/lr`, `train/grad_norm`,
`train/tokens_per_s`, `valid/loss` and `valid/ppl` at their step. tensorboardX is imported only
when the flag is given. A resumed run appends a new event file; TensorBoard then shows the
steps after the checkpoint twice only where the first run went past it.
"""
from __future__ import annotations

TRAIN_SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                 "tokens_per_s": "train/tokens_per_s"}
VALID_SCALARS = {"valid_loss": "valid/loss", "valid_ppl": "valid/ppl"}


class TensorBoardLog:
    """Wraps a log writer (`write(record)`, `close()`): every record goes to it unchanged and
    its numbers to a TensorBoard event file in `logdir`."""

    def __init__(self, log, logdir: str):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as exc:
            raise RuntimeError("--tensorboard needs the tensorboardX package "
                               "(pip install tensorboardX; see requirements.txt)") from exc
        self.log, self.logdir = log, logdir
        self.writer = SummaryWriter(logdir=logdir)

    def write(self, record: dict):
        self.log.write(record)
        names = {"train": TRAIN_SCALARS, "valid": VALID_SCALARS}.get(record.get("kind"), {})
        for key, tag in names.items():
            value = record.get(key)
            if value is not None:
                self.writer.add_scalar(tag, float(value), int(record["step"]))

    def close(self):
        try:
            self.log.close()
        finally:
            self.writer.close()
