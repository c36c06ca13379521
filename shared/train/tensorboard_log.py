"""`--tensorboard DIR`: the training log's records also written as TensorBoard scalars.

The JSON-lines log (`shared/train/trainlog.py`) stays the record of a run; this tee adds an event file
in DIR (TFRecord framing with masked CRC32C and Event/Summary protobufs, the format TensorBoard
reads, written with tensorboardX's record writer and protos) with `train/loss`, `train/lr`,
`train/grad_norm`, `train/tokens_per_s`, `valid/loss` and `valid/ppl` at their step, and a task's
own metrics logged beside the loss (e.g. DPO's `rewards_margin`: `train/rewards_margin`,
`valid/rewards_margin`).
tensorboardX is imported only when the flag is given.

Events are written synchronously, one event per log record, flushed to the file at once: a hard
stop (`kill -9`) loses at most the record being written, never the steps before it (tensorboardX's
`SummaryWriter` queues events in a thread and flushes every 120 s, so a killed run's file could
be empty). A resumed run first rewrites the event files already in DIR without the events after
its checkpoint step (and without a record cut short by the crash), as `train_log.jsonl` is
rewritten, then appends a new file: every step shows once, as in an uninterrupted run. A fresh
run leaves the files already in DIR alone (give each run its own DIR).
"""
from __future__ import annotations

import os
import socket
import struct
import time

from shared.runtime.atomic import atomic_open

TRAIN_SCALARS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
                 "tokens_per_s": "train/tokens_per_s"}
VALID_SCALARS = {"valid_loss": "valid/loss", "valid_ppl": "valid/ppl"}
RECORD_FIELDS = ("kind", "step", "epoch", "elapsed_s", "backend")  # what is not a curve
EVENT_FILE_PREFIX = "events.out.tfevents."


class EventFileError(ValueError):
    """An event file in the --tensorboard folder that cannot be read; the message names it."""


def _tensorboardx():
    try:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import RecordWriter, masked_crc32c
    except ImportError as exc:
        raise RuntimeError("--tensorboard needs the tensorboardX package "
                           "(pip install tensorboardX; see requirements.txt)") from exc
    return Event, Summary, RecordWriter, masked_crc32c


def read_records(path) -> tuple:
    """(serialized records, whether the file ends in a record cut short) of a TFRecord file.
    A record whose checksum is wrong is an error naming the file and offset."""
    _, _, _, masked_crc32c = _tensorboardx()
    with open(path, "rb") as f:
        data = f.read()
    records, pos = [], 0
    while pos < len(data):
        if pos + 12 > len(data):
            return records, True
        header = data[pos:pos + 8]
        (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack(
            "<I", data[pos + 8:pos + 12])
        if header_crc != masked_crc32c(header):
            raise EventFileError(f"{path}: offset {pos}: bad record length checksum")
        if pos + 16 + length > len(data):
            return records, True
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if body_crc != masked_crc32c(body):
            raise EventFileError(f"{path}: offset {pos}: bad record checksum")
        records.append(body)
        pos += 16 + length
    return records, False


def event_files(logdir) -> list:
    return sorted(os.path.join(logdir, name) for name in os.listdir(logdir)
                  if name.startswith(EVENT_FILE_PREFIX))


def drop_events_after(logdir, step: int) -> int:
    """Rewrite each event file in `logdir` without the scalar events after `step` (and without
    a last record cut short); files that change are replaced atomically. Returns how many
    events were dropped."""
    Event, _, _, masked_crc32c = _tensorboardx()
    dropped = 0
    for path in event_files(logdir):
        records, torn = read_records(path)
        kept = [r for r in records if not _after(Event.FromString(r), step)]
        if len(kept) == len(records) and not torn:
            continue
        dropped += len(records) - len(kept)
        with atomic_open(path, "wb") as f:
            for record in kept:
                header = struct.pack("<Q", len(record))
                f.write(header + struct.pack("<I", masked_crc32c(header)) + record
                        + struct.pack("<I", masked_crc32c(record)))
    return dropped


def _after(event, step: int) -> bool:
    return event.HasField("summary") and event.step > step


def _new_event_file(logdir) -> str:
    """A file name TensorBoard reads after the ones already there (it reads them in name order)
    that no earlier run used."""
    now = int(time.time())
    for path in event_files(logdir):
        stamp = os.path.basename(path)[len(EVENT_FILE_PREFIX):].split(".", 1)[0]
        if stamp.isdigit():
            now = max(now, int(stamp) + 1)
    return os.path.join(logdir, f"{EVENT_FILE_PREFIX}{now:010d}.{socket.gethostname()}."
                                f"{os.getpid()}")


class TensorBoardLog:
    """Wraps a log writer (`write(record)`, `close()`): every record goes to it unchanged and
    its numbers to a TensorBoard event file in `logdir`. `resume_step`: the checkpoint step a
    resumed run continues from (events after it are dropped from the files already there)."""

    def __init__(self, log, logdir: str, resume_step: int | None = None):
        Event, self._summary, RecordWriter, _ = _tensorboardx()
        self._event = Event
        self.log, self.logdir = log, logdir
        os.makedirs(logdir, exist_ok=True)
        if resume_step is not None:
            drop_events_after(logdir, resume_step)
        self.path = _new_event_file(logdir)
        self.writer = RecordWriter(self.path)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event):
        self.writer.write(event.SerializeToString())
        self.writer.flush()

    def write(self, record: dict):
        self.log.write(record)
        kind = record.get("kind")
        names = dict({"train": TRAIN_SCALARS, "valid": VALID_SCALARS}.get(kind, {}))
        if names:  # a task's own metrics beside the loss (DPO's rewards, ...): kind/name
            names.update({key: f"{kind}/{key[len('valid_'):] if key.startswith('valid_') else key}"
                          for key, value in record.items()
                          if key not in names and key not in RECORD_FIELDS
                          and isinstance(value, (int, float)) and not isinstance(value, bool)})
        values = [self._summary.Value(tag=tag, simple_value=float(record[key]))
                  for key, tag in names.items() if record.get(key) is not None]
        if values:
            self._write(self._event(wall_time=time.time(), step=int(record["step"]),
                                    summary=self._summary(value=values)))

    def close(self):
        try:
            self.log.close()
        finally:
            self.writer.close()
