"""Training logs: read them (ours or microsoft/LoRA's), write them, and compare two runs.

Two formats are read, auto-detected:
- this project's `train_log.jsonl`, one JSON object a line, `"kind": "train"` (every step) or
  `"kind": "valid"` (every eval interval), written by `JsonlLogWriter`;
- the stdout of microsoft/LoRA's `examples/NLG/src/gpt2_ft.py`, saved to a file by its user, so a
  run of the reference can be compared with ours without re-running it.

In the reference's `| epoch ... |` lines, `loss` is the AverageMeter's `.val` (the loss of the
step that was logged) and `avg loss` its `.avg` (the meter is reset after every log line, so it
is the mean since the previous line). Both are printed with two decimals only: agreement with
such a log cannot be better than +-0.005.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from shared.runtime.atomic import atomic_open
from shared.runtime.differences import agree, relative

LOG_FILENAME = "train_log.jsonl"
FORMAT_JSONL = "jsonl"
FORMAT_MSLORA = "microsoft-lora"
# Losses in a microsoft/LoRA stdout log are printed with "%5.2f".
MSLORA_LOSS_RESOLUTION = 0.005


class TrainLogError(ValueError):
    """A log that cannot be read as it is; the message names the file (and line)."""


@dataclass
class TrainRecord:
    """One optimisation step. `loss` is the loss of that step; optional fields may be unknown."""
    step: int
    loss: float
    epoch: Optional[int] = None
    lr: Optional[float] = None
    grad_norm: Optional[float] = None
    tokens_per_s: Optional[float] = None
    elapsed_s: Optional[float] = None
    avg_loss: Optional[float] = None  # microsoft/LoRA: mean loss since the previous log line


@dataclass
class ValidRecord:
    """One evaluation on the validation set, after optimisation step `step`."""
    step: int
    valid_loss: float
    valid_ppl: Optional[float] = None
    epoch: Optional[int] = None
    elapsed_s: Optional[float] = None


@dataclass
class TrainLog:
    """Everything one run logged, in step order, plus where it came from."""
    source: str
    format: str
    label: str
    backend: Optional[str] = None
    train: list = field(default_factory=list)  # [TrainRecord]
    valid: list = field(default_factory=list)  # [ValidRecord]

    @property
    def loss_resolution(self) -> float:
        """Smallest loss difference the log can show (0 for full-precision logs)."""
        return MSLORA_LOSS_RESOLUTION if self.format == FORMAT_MSLORA else 0.0

    @property
    def last_step(self) -> Optional[int]:
        steps = [r.step for r in self.train] + [r.step for r in self.valid]
        return max(steps) if steps else None

    def train_losses(self) -> dict:
        return {r.step: r.loss for r in self.train}

    def valid_losses(self) -> dict:
        return {r.step: r.valid_loss for r in self.valid}


# ------------------------------------------------------------------------------ jsonl records
# key -> (accepted types, required); bool is excluded explicitly because it is an int in Python.
_NUM = (int, float)
_SCHEMA = {
    "train": {"step": (int, True), "loss": (_NUM, True), "epoch": (int, False),
              "lr": (_NUM, False), "grad_norm": (_NUM, False), "tokens_per_s": (_NUM, False),
              "elapsed_s": (_NUM, False), "backend": (str, False)},
    "valid": {"step": (int, True), "valid_loss": (_NUM, True), "valid_ppl": (_NUM, False),
              "epoch": (int, False), "elapsed_s": (_NUM, False), "backend": (str, False)},
}


def parse_record(obj, where: str):
    """Check one decoded jsonl object and turn it into a TrainRecord or ValidRecord.

    Extra keys are allowed (and dropped); missing or mistyped known keys are errors.
    Returns (record, backend or None).
    """
    if not isinstance(obj, dict):
        raise TrainLogError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind not in _SCHEMA:
        raise TrainLogError(f"{where}: 'kind' must be one of {sorted(_SCHEMA)}, got {kind!r}")
    values = {}
    for key, (types, required) in _SCHEMA[kind].items():
        value = obj.get(key)
        if value is None:
            if required:
                raise TrainLogError(f"{where}: {kind} record lacks '{key}'")
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise TrainLogError(f"{where}: '{key}' must be {_type_name(types)}, got {value!r}")
        values[key] = float(value) if types is _NUM else value
    if values["step"] < 0:
        raise TrainLogError(f"{where}: 'step' must be >= 0, got {values['step']}")
    backend = values.pop("backend", None)
    record = TrainRecord(**values) if kind == "train" else ValidRecord(**values)
    return record, backend


def _type_name(types) -> str:
    return "a number" if types is _NUM else {int: "an integer", str: "a string"}[types]


def _read_jsonl(path: str, lines: list) -> TrainLog:
    log = TrainLog(source=path, format=FORMAT_JSONL, label="")
    backends = set()
    for lineno, text in enumerate(lines, 1):
        if not text.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainLogError(f"{where}: not valid JSON ({exc.msg}): {text.strip()[:80]!r}") \
                from None
        record, backend = parse_record(obj, where)
        if backend:
            backends.add(backend)
        _append_in_order(log, record, where)
    if len(backends) > 1:
        raise TrainLogError(f"{path}: records from several backends {sorted(backends)}")
    log.backend = backends.pop() if backends else None
    return log


def _append_in_order(log: TrainLog, record, where: str):
    """Steps must increase; a repeat usually means a resumed run whose log was not truncated."""
    records = log.train if isinstance(record, TrainRecord) else log.valid
    if records and record.step <= records[-1].step:
        raise TrainLogError(
            f"{where}: step {record.step} does not follow step {records[-1].step}; "
            "was a resumed run appended without truncating its log?")
    records.append(record)


# ------------------------------------------------------------------- microsoft/LoRA stdout log
_F = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)"
_MS_TRAIN_START = re.compile(r"^\s*\|\s*epoch\b")
_MS_EVAL_START = re.compile(r"^\s*\|\s*Eval\b")
_MS_TRAIN = re.compile(
    r"^\s*\|\s*epoch\s+(\d+)\s+step\s+(\d+)\s*\|\s*(\d+)\s+batches\s*\|"
    rf"\s*lr\s+{_F}\s*\|\s*ms/batch\s+{_F}\s*\|\s*loss\s+{_F}\s*\|\s*avg\s+loss\s+{_F}"
    rf"\s*\|\s*ppl\s+{_F}\s*$")
_MS_EVAL = re.compile(
    rf"^\s*\|\s*Eval\s+(\d+)\s+at\s+step\s+(\d+)\s*\|\s*time:\s*{_F}\s*s\s*\|"
    rf"\s*valid\s+loss\s+{_F}\s*\|\s*valid\s+ppl\s+{_F}\s*(?:\|\s*best\s+ppl\s+{_F}\s*)?\|?\s*$")
_MS_AVG = re.compile(rf"^\s*average\s+loss\s*:?\s+{_F}\s*$")


def _looks_like_mslora(lines: list) -> bool:
    return any(_MS_TRAIN_START.match(t) or _MS_EVAL_START.match(t) for t in lines)


def _read_mslora(path: str, lines: list) -> TrainLog:
    """Parse gpt2_ft.py's stdout; other lines (arguments, checkpoints, warnings) are skipped.

    The evaluation's own `average loss X` line, printed right before `| Eval`, carries the
    validation loss at full precision, and is used when it agrees with the rounded value.
    """
    log = TrainLog(source=path, format=FORMAT_MSLORA, label="", backend="torch")
    pending_avg = None
    for lineno, text in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        if _MS_TRAIN_START.match(text):
            m = _MS_TRAIN.match(text)
            if not m:
                raise TrainLogError(f"{where}: unreadable microsoft/LoRA train line: {text.strip()!r}")
            epoch, step, _batches, lr, _ms, loss, avg, _ppl = m.groups()
            _append_in_order(log, TrainRecord(step=int(step), loss=float(loss), epoch=int(epoch),
                                              lr=float(lr), avg_loss=float(avg)), where)
            pending_avg = None
        elif _MS_EVAL_START.match(text):
            m = _MS_EVAL.match(text)
            if not m:
                raise TrainLogError(f"{where}: unreadable microsoft/LoRA eval line: {text.strip()!r}")
            _idx, step, _time, vloss, vppl, _best = m.groups()
            vloss, vppl = float(vloss), float(vppl)
            if pending_avg is not None and abs(pending_avg - vloss) <= MSLORA_LOSS_RESOLUTION + 1e-9:
                vloss, vppl = pending_avg, math.exp(pending_avg)
            epoch = log.train[-1].epoch if log.train else None
            _append_in_order(log, ValidRecord(step=int(step), valid_loss=vloss, valid_ppl=vppl,
                                              epoch=epoch), where)
            pending_avg = None
        else:
            m = _MS_AVG.match(text)
            if m:
                pending_avg = float(m.group(1))
    return log


# --------------------------------------------------------------------------------- reading
def resolve_log_path(path_or_dir) -> str:
    """A run folder stands for its `train_log.jsonl`."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        candidate = os.path.join(path, LOG_FILENAME)
        if not os.path.isfile(candidate):
            raise TrainLogError(f"run folder {path} has no {LOG_FILENAME}")
        return candidate
    if not os.path.isfile(path):
        raise TrainLogError(f"no such log file or run folder: {path}")
    return path


def read_log(path_or_dir, label: Optional[str] = None) -> TrainLog:
    """Read a jsonl log, a run folder holding one, or a microsoft/LoRA stdout log.

    `label` names the run in plots and tables; by default its backend, else the file's name.
    """
    path = resolve_log_path(path_or_dir)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise TrainLogError(f"{path}: not a text file ({exc.reason})") from None
    first = next((t for t in lines if t.strip()), None)
    if first is None:
        raise TrainLogError(f"{path}: empty log")
    if first.lstrip().startswith("{"):
        log = _read_jsonl(path, lines)
    elif _looks_like_mslora(lines):
        log = _read_mslora(path, lines)
    else:
        raise TrainLogError(
            f"{path}: neither a {LOG_FILENAME} (JSON lines) nor a microsoft/LoRA gpt2_ft.py "
            f"stdout log (no '| epoch ...' or '| Eval ...' lines); first line: {first.strip()[:80]!r}")
    if not log.train and not log.valid:
        raise TrainLogError(f"{path}: no training or validation records")
    log.label = label or _default_label(log, path)
    return log


def _default_label(log: TrainLog, path: str) -> str:
    if log.format == FORMAT_MSLORA:
        return "microsoft/LoRA"
    if log.backend:
        return log.backend
    name = os.path.basename(path)
    if name == LOG_FILENAME:
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or name
    return os.path.splitext(name)[0]


# --------------------------------------------------------------------------------- writing
class JsonlLogWriter:
    """Append-only writer of `train_log.jsonl`, one flushed line per record.

    With `resume_step`, records after that step (written by the interrupted run after its last
    checkpoint) are dropped first, in an atomic rewrite, so the resumed log equals the log of
    an uninterrupted run. A half-written last line left by a crash is dropped too. Without it,
    an existing log is replaced by an empty one (a fresh run).
    """

    def __init__(self, path, resume_step: Optional[int] = None):
        self.path = os.fspath(path)
        self._last = {TrainRecord: None, ValidRecord: None}
        kept = [] if resume_step is None else self._lines_up_to(resume_step)
        with atomic_open(self.path) as f:
            for line, record in kept:
                f.write(line + "\n")
                self._last[type(record)] = record.step
        self._file = open(self.path, "a", encoding="utf-8")

    def _lines_up_to(self, resume_step: int) -> list:
        """[(line as written, record)] of the existing log with step <= resume_step."""
        if not os.path.isfile(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        kept = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{self.path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if lineno == len(lines):  # no newline after it: cut short by the crash
                    break
                raise TrainLogError(f"{where}: not valid JSON ({exc.msg})") from None
            record, _ = parse_record(obj, where)
            if record.step <= resume_step:
                kept.append((line, record))
        return kept

    def write(self, record: dict):
        """Append one record (a dict in the jsonl schema); it is checked before it is written."""
        parsed, _ = parse_record(record, f"{self.path} (record being written)")
        last = self._last[type(parsed)]
        if last is not None and parsed.step <= last:
            raise TrainLogError(f"{self.path}: step {parsed.step} written after step {last}")
        self._last[type(parsed)] = parsed.step
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------- comparing
def align_steps(log_a: TrainLog, log_b: TrainLog, kind: str = "train") -> list:
    """[(step, loss_a, loss_b)] for every step both logs have, in step order.

    `kind` is "train" (training loss) or "valid" (validation loss).
    """
    if kind not in ("train", "valid"):
        raise ValueError(f"kind must be 'train' or 'valid', got {kind!r}")
    a = log_a.train_losses() if kind == "train" else log_a.valid_losses()
    b = log_b.train_losses() if kind == "train" else log_b.valid_losses()
    return [(step, a[step], b[step]) for step in sorted(a.keys() & b.keys())]


def _abs_diff(a: float, b: float) -> float:
    """|a - b| where equal values (infinities, NaN and NaN) agree and a lone NaN is infinitely off."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b)


def _agreement(aligned: list, tol: float) -> dict:
    """Summary of |a - b| over aligned steps; a NaN on either side counts as a disagreement."""
    if not aligned:
        return {"n_steps": 0, "max_abs": None, "mean_abs": None, "max_rel": None,
                "first_step_over": None, "tol": tol}
    diffs, rels, first_over = [], [], None
    for step, a, b in aligned:
        d = _abs_diff(a, b)
        diffs.append(d)
        rels.append(float(relative(d, a, b, floor=1e-12)) if math.isfinite(d) else math.inf)
        if first_over is None and not agree(a, b, atol=tol, equal_nonfinite=True):
            first_over = step
    return {"n_steps": len(aligned), "max_abs": max(diffs), "mean_abs": sum(diffs) / len(diffs),
            "max_rel": max(rels), "first_step_over": first_over, "tol": tol}


def loss_agreement(log_a: TrainLog, log_b: TrainLog, tol: float = 1e-3) -> dict:
    """How closely two runs' losses agree, on the steps both logged.

    Returns {"train": {...}, "valid": {...}}, each with n_steps, max_abs, mean_abs, max_rel
    (|a-b| / max(|a|, |b|)) and first_step_over (first step with |a-b| > tol, or None).
    """
    return {kind: _agreement(align_steps(log_a, log_b, kind), tol) for kind in ("train", "valid")}


def loss_table(log_a: TrainLog, log_b: TrainLog, kind: str = "train") -> list:
    """Rows {"step", <label a>, <label b>, "abs_diff"} for the steps both logs have."""
    if log_a.label == log_b.label:
        raise ValueError(f"both logs are labelled {log_a.label!r}; give them distinct labels")
    return [{"step": step, log_a.label: a, log_b.label: b, "abs_diff": _abs_diff(a, b)}
            for step, a, b in align_steps(log_a, log_b, kind)]
