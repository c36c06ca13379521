"""--tensorboard event files survive a hard stop: after `kill -9` and `--resume`, TensorBoard (its
own event reader) and the raw TFRecord files show every step once, with the JSON log's values."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from shared.train.tensorboard_log import (EventFileError, TensorBoardLog, drop_events_after,
                                          event_files, read_records)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ListLog:
    def __init__(self):
        self.records, self.closed = [], False

    def write(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


def scalars(logdir):
    """{tag: [(step, value)]} over the event files in name order, read from the raw files."""
    from tensorboardX.proto.event_pb2 import Event
    out = {}
    for path in event_files(logdir):
        records, torn = read_records(path)
        assert not torn, path
        for record in records:
            event = Event.FromString(record)
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def train_record(step, loss):
    return {"kind": "train", "step": step, "loss": loss, "lr": 0.1, "grad_norm": None,
            "tokens_per_s": 10.0}


def test_each_record_is_on_disk_at_once_and_resume_drops_the_later_steps(tmp_path):
    log = ListLog()
    tb = TensorBoardLog(log, str(tmp_path))
    for step in range(1, 6):
        tb.write(train_record(step, 1.0 / step))
        # nothing waits in a queue or a buffer: what a kill -9 would leave is already there
        assert [s for s, _ in scalars(tmp_path)["train/loss"]] == list(range(1, step + 1))
    tb.write({"kind": "valid", "step": 4, "valid_loss": 2.0, "valid_ppl": 7.39})
    first = tb.path
    with open(first, "ab") as f:  # a record cut short by the kill
        f.write(struct.pack("<Q", 40) + b"\x00\x01")
    assert read_records(first)[1] is True
    resumed = TensorBoardLog(ListLog(), str(tmp_path), resume_step=3)
    assert resumed.path != first and event_files(tmp_path) == [first, resumed.path]
    assert read_records(first)[1] is False  # the torn tail is gone
    assert [s for s, _ in scalars(tmp_path)["train/loss"]] == [1, 2, 3]
    assert "valid/loss" not in scalars(tmp_path) and "train/grad_norm" not in scalars(tmp_path)
    for step in range(4, 7):
        resumed.write(train_record(step, 1.0 / step))
    resumed.close()
    assert scalars(tmp_path)["train/loss"] == [(s, pytest.approx(1.0 / s)) for s in range(1, 7)]
    assert drop_events_after(str(tmp_path), 6) == 0  # nothing after the last step: untouched


def test_a_tasks_own_metrics_become_curves_too(tmp_path):
    tb = TensorBoardLog(ListLog(), str(tmp_path))
    tb.write(dict(train_record(1, 0.69), epoch=1, elapsed_s=3.0, backend="torch",
                  rewards_margin=0.25, rewards_accuracy=1.0))
    tb.write({"kind": "valid", "step": 1, "epoch": 1, "valid_loss": 0.7, "valid_ppl": 2.0,
              "valid_rewards_margin": -0.5, "backend": "torch"})
    tb.close()
    tags = scalars(tmp_path)
    assert sorted(tags) == ["train/loss", "train/lr", "train/rewards_accuracy",
                            "train/rewards_margin", "train/tokens_per_s", "valid/loss",
                            "valid/ppl", "valid/rewards_margin"]
    assert tags["train/rewards_margin"] == [(1, 0.25)]
    assert tags["valid/rewards_margin"] == [(1, -0.5)]


def test_a_damaged_event_file_is_named(tmp_path):
    tb = TensorBoardLog(ListLog(), str(tmp_path))
    tb.write(train_record(1, 1.0))
    tb.close()
    data = bytearray(open(tb.path, "rb").read())
    data[-6] ^= 0xFF  # inside the last record's body
    open(tb.path, "wb").write(bytes(data))
    with pytest.raises(EventFileError, match=f"{tb.path}: offset \\d+: bad record checksum"):
        TensorBoardLog(ListLog(), str(tmp_path), resume_step=0)


def ft_argv(encoded, work_dir, tb_dir, *extra):
    return [sys.executable, os.path.join(ROOT, "scripts", "gpt2_ft.py"), "--backend", "torch",
            "--device", "cpu", "--train_data", str(encoded / "train.jsonl"),
            "--valid_data", str(encoded / "valid.jsonl"), "--n_embd", "32", "--n_layer", "1",
            "--n_head", "4", "--seq_len", "128", "--train_batch_size", "4",
            "--max_step", "24", "--log_interval", "1", "--save_interval", "5",
            "--eval_interval", "12", "--max_eval_batches", "2", "--lr", "0.001",
            "--work_dir", str(work_dir), "--tensorboard", str(tb_dir), "--no_progress", *extra]


def logged(work_dir, kind):
    path = os.path.join(work_dir, "train_log.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            pass
    return [r for r in records if r["kind"] == kind]


def test_kill_9_then_resume_shows_every_step_once(tmp_path, encoded):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    work, tb = tmp_path / "run", tmp_path / "tb"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(ft_argv(encoded, work, tb), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        steps = [r["step"] for r in logged(work, "train")]
        if steps and steps[-1] >= 6:  # past the step-5 checkpoint
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = logged(work, "train")[-1]["step"]
    assert killed_at < 24
    (first,) = event_files(tb)
    assert os.path.getsize(first) > 0
    shutil.copytree(tb, tmp_path / "tb_at_kill")
    at_kill = [s for s, _ in scalars(tmp_path / "tb_at_kill")["train/loss"]]
    assert at_kill in (list(range(1, killed_at + 1)), list(range(1, killed_at)))

    done = subprocess.run(ft_argv(encoded, work, tb, "--resume"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed from step" in done.stdout
    train = [(r["step"], r["loss"]) for r in logged(work, "train")]
    valid = [(r["step"], r["valid_loss"]) for r in logged(work, "valid")]
    assert [s for s, _ in train] == list(range(1, 25))
    raw = scalars(tb)
    assert len(event_files(tb)) == 2
    assert [s for s, _ in raw["train/loss"]] == list(range(1, 25))
    np.testing.assert_allclose([v for _, v in raw["train/loss"]], [v for _, v in train],
                               rtol=1e-6)
    assert [s for s, _ in raw["valid/loss"]] == [s for s, _ in valid] == [12, 24]
    # what TensorBoard itself shows
    acc = EventAccumulator(str(tb))
    acc.Reload()
    shown = acc.Scalars("train/loss")
    assert [e.step for e in shown] == list(range(1, 25))
    np.testing.assert_allclose([e.value for e in shown], [v for _, v in train], rtol=1e-6)
    assert [e.step for e in acc.Scalars("valid/loss")] == [12, 24]
