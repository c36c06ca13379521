#!/usr/bin/env python
"""Compare two training runs: loss agreement, per-step losses and final metrics.

A and B are `train_log.jsonl` files, run folders holding one, or microsoft/LoRA gpt2_ft.py
stdout logs. Final metrics come from `metrics.json` or `scores.txt` (`NAME: value` lines) in
each run's folder, when there. Exit status: 0 when the losses the runs share agree within
--tol (plus the rounding of microsoft/LoRA logs' 2-decimal losses); 1 when a loss differs by
more (stderr names the first step and key) or the runs share no step; 2 when an input cannot be
read or a flag is bad. Example:
    python scripts/compare_runs.py runs/torch runs/jittor --md compare.md --tol 1e-3
"""
import argparse
import json
import math
import os
import re
import sys

from shared.runtime.arg_types import non_negative_float, positive_int
from shared.runtime.atomic import atomic_group, atomic_open, write_text
from shared.runtime.entry_point import run_script
from shared.runtime.preflight import check_outputs, output_file_problems
from shared.pipeline.report import LOSS_DIGITS, format_value, markdown_table, render_report_md
from shared.train.trainlog import loss_agreement, loss_table, read_log

METRICS_JSON = "metrics.json"
SCORES_TXT = "scores.txt"
_SCORE_LINE = re.compile(
    r"^\s*([A-Za-z][\w\-. ]*?)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class InputError(ValueError):
    """An input file that cannot be used; the message names it."""


def read_final_metrics(folder: str) -> dict:
    """{name: number} from `metrics.json` (nested keys dotted) and/or `scores.txt`.

    Non-numeric entries of metrics.json are skipped; when both files name a metric,
    metrics.json wins.
    """
    metrics = {}
    scores = os.path.join(folder, SCORES_TXT)
    if os.path.isfile(scores):
        with open(scores, encoding="utf-8") as f:
            for line in f:
                m = _SCORE_LINE.match(line)
                if m:
                    metrics[m.group(1)] = float(m.group(2))
    path = os.path.join(folder, METRICS_JSON)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
        metrics.update(_numeric_leaves(data))
    return metrics


def _numeric_leaves(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(_numeric_leaves(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _run_folder(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def load_runs(path_a, path_b, labels=None):
    """Read both logs with distinct labels, and their runs' final metrics."""
    labels = labels or [None, None]
    logs = [read_log(path_a, label=labels[0]), read_log(path_b, label=labels[1])]
    if logs[0].label == logs[1].label:
        if labels[0]:
            raise InputError(f"--labels must differ, got {labels[0]!r} twice")
        logs[0].label, logs[1].label = f"{logs[0].label} A", f"{logs[1].label} B"
    metrics = {log.label: read_final_metrics(_run_folder(p))
               for log, p in zip(logs, (path_a, path_b))}
    return logs, metrics


def compare(log_a, log_b, metrics: dict, tol: float) -> dict:
    """Everything the comparison found, in the report's schema (see shared/pipeline/report.py). A loss
    counts as over when it differs by more than `tol` plus both logs' loss resolution (the
    rounding of microsoft/LoRA's 2-decimal losses; 0 for JSON-lines logs)."""
    tol = tol + log_a.loss_resolution + log_b.loss_resolution
    return {
        "run": f"{log_a.label} vs {log_b.label}",
        "runs": {log.label: {"source": log.source, "format": log.format, "backend": log.backend,
                             "train_records": len(log.train), "valid_records": len(log.valid),
                             "last_step": log.last_step, "loss_resolution": log.loss_resolution}
                 for log in (log_a, log_b)},
        "metrics": {label: m for label, m in metrics.items() if m},
        "loss_agreement": loss_agreement(log_a, log_b, tol),
        "loss_table": loss_table(log_a, log_b, "train"),
        "valid_loss_table": loss_table(log_a, log_b, "valid"),
    }


# --------------------------------------------------------------------------------- output
def text_table(headers, rows, digits: int = 6) -> str:
    cells = [[format_value(h) for h in headers]] + [[format_value(c, digits) for c in r]
                                                    for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def head_tail(rows: list, n: int) -> list:
    """First and last n rows, with a '...' row between them when rows are left out."""
    if len(rows) <= 2 * n:
        return rows
    gap = {key: "..." for key in rows[0]}
    return rows[:n] + [gap] + rows[-n:]


def render_text(result: dict, rows: int) -> str:
    out = []
    for label, run in result["runs"].items():
        out.append(f"{label}: {run['source']} ({run['format']}): {run['train_records']} train "
                   f"records, {run['valid_records']} evaluations, last step {run['last_step']}")
    resolution = sum(run["loss_resolution"] for run in result["runs"].values())
    if resolution:
        out.append(f"note: microsoft/LoRA logs print losses with 2 decimals; the tolerance "
                   f"includes their rounding ({format_value(resolution)})")
    agreement = result["loss_agreement"]
    out.append(f"\nLoss agreement (tol {format_value(agreement['train']['tol'])}):")
    for kind, a in agreement.items():
        if not a["n_steps"]:
            out.append(f"  {kind}: no common steps")
            continue
        over = a["first_step_over"]
        out.append(f"  {kind}: {a['n_steps']} common steps, max |a-b| {format_value(a['max_abs'])}, "
                   f"mean |a-b| {format_value(a['mean_abs'])}, max rel {format_value(a['max_rel'])}, "
                   f"first step over tol: {'none' if over is None else over}")
    for key, title in (("loss_table", "Training loss"), ("valid_loss_table", "Validation loss")):
        table = result[key]
        if table:
            headers = list(table[0])
            shown = head_tail(table, rows)
            out.append(f"\n{title} ({len(table)} common steps"
                       + (f", first and last {rows}" if len(shown) < len(table) else "") + "):")
            out.append(text_table(headers, [[r[h] for h in headers] for r in shown],
                                  digits=LOSS_DIGITS))
    metrics = result["metrics"]
    if metrics:
        labels = list(result["runs"])
        names = []
        for m in metrics.values():
            names += [n for n in m if n not in names]
        table = []
        for name in names:
            values = [metrics.get(label, {}).get(name) for label in labels]
            diff = values[0] - values[1] if None not in values else None
            table.append([name] + values + [diff])
        out.append("\nFinal metrics:")
        out.append(text_table(["metric"] + labels + [f"{labels[0]} - {labels[1]}"], table))
    else:
        out.append(f"\nFinal metrics: neither run folder has {METRICS_JSON} or {SCORES_TXT}")
    return "\n".join(out)


def render_markdown(result: dict) -> str:
    runs = [[label, run["format"], run["train_records"], run["valid_records"], run["last_step"],
             run["source"]] for label, run in result["runs"].items()]
    runs_md = "## Runs\n\n" + markdown_table(
        ["run", "format", "train records", "evaluations", "last step", "source"], runs)
    title, _, rest = render_report_md(result).partition("\n\n")
    return f"{title}\n\n{runs_md}\n\n{rest}"


def _json_safe(value):
    """Infinite/NaN differences as strings, so the JSON file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def disagreements(result: dict) -> list:
    """One line per failed check: each loss kind over tolerance (its first step, that step's
    difference, how many steps are over), or no common step at all."""
    agreement = result["loss_agreement"]
    if not any(a["n_steps"] for a in agreement.values()):
        return ["the runs share no logged step: nothing was compared"]
    tables = {"train": result["loss_table"], "valid": result["valid_loss_table"]}
    lines = []
    for kind, a in agreement.items():
        if a["first_step_over"] is None:
            continue
        over = [row for row in tables[kind] if not row["abs_diff"] <= a["tol"]]
        first = next(row for row in over if row["step"] == a["first_step_over"])
        lines.append(f"{kind} loss differs by {format_value(first['abs_diff'])} at step "
                     f"{first['step']} (tolerance {format_value(a['tol'])}; {len(over)} of "
                     f"{a['n_steps']} common steps over)")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", metavar="A", help="log or run folder of the first run")
    p.add_argument("b", metavar="B", help="log or run folder of the second run")
    p.add_argument("--labels", nargs=2, default=None, metavar=("LA", "LB"))
    p.add_argument("--tol", type=non_negative_float, default=1e-3,
                   help="absolute loss tolerance (exit status 1 when a loss differs by more)")
    p.add_argument("--rows", type=positive_int, default=5, help="first/last N steps to print")
    p.add_argument("--json", default=None, metavar="OUT", help="write the comparison as JSON")
    p.add_argument("--md", default=None, metavar="OUT", help="write the comparison as Markdown")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_script(lambda: run(args))


def run(args):
    check_outputs([p for flag, path in (("--json", args.json), ("--md", args.md)) if path
                   for p in output_file_problems(flag, path)])
    (log_a, log_b), metrics = load_runs(args.a, args.b, args.labels)
    result = compare(log_a, log_b, metrics, args.tol)
    print(render_text(result, args.rows))
    with atomic_group():  # the JSON and the Markdown, or neither
        if args.json:
            with atomic_open(args.json) as f:
                json.dump(_json_safe(result), f, indent=2)
                f.write("\n")
        if args.md:
            write_text(args.md, render_markdown(result))
    if args.json:
        print(f"\nwrote {args.json}")
    if args.md:
        print(f"wrote {args.md}")
    failures = disagreements(result)
    for line in failures:
        print(f"compare_runs: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
