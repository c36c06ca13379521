"""The end-to-end pipeline's report: `report.json` (the results as they are) and `report.md`.

The Markdown is for people: both backends side by side, how closely their losses agreed,
where the time went and on which machine. Every section is optional, so a pipeline that
stopped early (or skipped plotting) still gets a report of what it has.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

from shared.runtime.atomic import atomic_open, write_text

MAX_TABLE_ROWS = 40
LOSS_DIGITS = 8  # enough for float32 losses whose backends differ in the 6th digit


# ---------------------------------------------------------------------------- formatting
def format_value(value, digits: int = 6) -> str:
    """A table cell: floats to `digits` significant digits, None as a dash, '|' escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}g}"
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalars and arrays
        return format_value(value.tolist(), digits)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, digits) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers, rows, digits: int = 6) -> str:
    """A GitHub-flavoured Markdown table; `rows` are sequences aligned with `headers`."""
    lines = ["| " + " | ".join(format_value(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(format_value(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def thin_rows(rows: list, max_rows: int = MAX_TABLE_ROWS) -> list:
    """At most `max_rows` rows, evenly spread, always keeping the first and the last."""
    if len(rows) <= max_rows:
        return list(rows)
    if max_rows < 2:
        raise ValueError(f"max_rows must be >= 2, got {max_rows}")
    last = len(rows) - 1
    picks = sorted({round(i * last / (max_rows - 1)) for i in range(max_rows)})
    return [rows[i] for i in picks]


def _flatten(mapping: dict, prefix: str = "") -> list:
    """[(dotted key, value)] of a nested dict, so nested settings fit a two-column table."""
    items = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, name + ".")
        else:
            items.append((name, value))
    return items


def _section(results: dict, key: str, kind):
    """results[key] if present and non-empty; a clear error if it has the wrong type."""
    value = results.get(key)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return None
    if not isinstance(value, kind):
        raise ValueError(f"results[{key!r}] must be a {kind.__name__}, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ sections
def _summary(results: dict) -> str:
    parts = []
    agreement = (_section(results, "loss_agreement", dict) or {}).get("train")
    if agreement and agreement.get("n_steps"):
        over = agreement.get("first_step_over")
        parts.append(
            f"training losses of the two backends differ by at most "
            f"{format_value(agreement.get('max_abs'))} over {agreement['n_steps']} common steps"
            + (f" (first exceeding {format_value(agreement.get('tol'))} at step {over})"
               if over is not None else ""))
    beam = _section(results, "beam_agreement", dict)
    if beam and beam.get("total"):
        parts.append(f"{beam.get('identical_predictions')} of {beam['total']} beam-search "
                     "predictions are identical")
    metrics = _section(results, "metrics", dict)
    if metrics:
        bleus = [f"{backend} {format_value(m.get('BLEU'))}" for backend, m in metrics.items()
                 if isinstance(m, dict) and m.get("BLEU") is not None]
        if bleus:
            parts.append("BLEU " + " vs ".join(bleus))
    if not parts:
        return "No comparison results were recorded for this run."
    text = parts[0][0].upper() + parts[0][1:] + "".join("; " + p for p in parts[1:]) + "."
    note = _dropout_note(_section(results, "config", dict) or {})
    return text + (" " + note if note else "")


def _dropout_note(config: dict) -> Optional[str]:
    """Why the curves drift apart when each framework draws its own dropout masks.

    Without this sentence a reader sees a 1e-2 loss gap and suspects the port; with it, the gap
    reads as what it is: two dropout streams, i.e. two seeds of one run.
    """
    dropout = config.get("lora_dropout")
    if not dropout or config.get("exact_dropout") is None:
        return None
    if config["exact_dropout"]:
        return (f"LoRA dropout {format_value(dropout)} drew its masks from one backend-neutral "
                "generator (exact dropout), so both backends saw the same masks at every step.")
    return (f"LoRA dropout {format_value(dropout)} drew its masks from each framework's own "
            "generator (exact dropout off): the runs agree while the LoRA update is zero and "
            "then drift apart like two seeds of one run; `--exact_dropout` (work.sh's default) "
            "makes them follow each other step for step, and the metric intervals judge this "
            "run against the seed band (`--seed_band`).")


def _metrics_section(metrics: dict) -> Optional[str]:
    backends = [b for b, m in metrics.items() if isinstance(m, dict)]
    if not backends:
        return None
    names = []
    for b in backends:
        names += [n for n in metrics[b] if n not in names]
    headers = ["metric"] + backends
    two = len(backends) == 2
    if two:
        headers.append(f"{backends[0]} - {backends[1]}")
    rows = []
    for name in names:
        values = [metrics[b].get(name) for b in backends]
        row = [name] + values
        if two:
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            row.append(values[0] - values[1] if numeric else None)
        rows.append(row)
    return "## Final metrics\n\n" + markdown_table(headers, rows)


def _agreement_section(agreement: dict) -> str:
    keys = ["n_steps", "max_abs", "mean_abs", "max_rel", "first_step_over", "tol"]
    rows = [[kind] + [values.get(k) for k in keys]
            for kind, values in agreement.items() if isinstance(values, dict)]
    return "## Loss agreement\n\n" + markdown_table(["loss"] + keys, rows)


def _loss_table_section(table: list) -> str:
    headers = list(table[0].keys())
    shown = thin_rows(table)
    note = (f"\n\n{len(shown)} of {len(table)} steps shown, evenly spaced."
            if len(shown) < len(table) else "")
    return ("## Loss per step\n\n"
            + markdown_table(headers, [[row.get(h) for h in headers] for row in shown],
                             digits=LOSS_DIGITS) + note)


def _key_value_section(title: str, mapping: dict) -> str:
    return f"## {title}\n\n" + markdown_table(["name", "value"], _flatten(mapping))


def _stages_section(stages: list) -> str:
    rows = [[s.get("name"), s.get("seconds"), s.get("status")] for s in stages]
    total = sum(s.get("seconds") or 0 for s in stages)
    rows.append(["total", total, ""])
    return "## Stage timings\n\n" + markdown_table(["stage", "seconds", "status"], rows)


def _plots_section(plots: dict, run_dir: str) -> str:
    lines = ["## Plots", ""]
    for name, path in plots.items():
        path = os.fspath(path)
        link = os.path.relpath(path, run_dir) if os.path.isabs(path) else path
        if os.path.isfile(os.path.join(run_dir, link)):
            lines.append(f"![{name}]({link.replace(os.sep, '/')})")
        else:
            lines.append(f"- {name}: `{link}` was not written")
        lines.append("")
    return "\n".join(lines).rstrip()


def render_report_md(results: dict, run_dir: str = ".") -> str:
    """The Markdown text of the report; sections whose data is missing are left out."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    run = results.get("run") or os.path.basename(os.path.abspath(run_dir))
    header = f"# Report: {run}"
    if results.get("created"):
        header += f"\n\nCreated {results['created']}."
    sections = [header, _summary(results)]
    metrics = _section(results, "metrics", dict)
    if metrics:
        sections.append(_metrics_section(metrics))
    agreement = _section(results, "loss_agreement", dict)
    if agreement:
        sections.append(_agreement_section(agreement))
    table = _section(results, "loss_table", list)
    if table:
        sections.append(_loss_table_section(table))
    final_check = _section(results, "final_check", dict)
    if final_check:
        sections.append(_key_value_section("Final check", final_check))
    beam = _section(results, "beam_agreement", dict)
    if beam:
        sections.append(_key_value_section("Beam-search agreement", beam))
    harness = _section(results, "harness_sections", list)  # Markdown rendered by alignment/
    if harness:
        sections += [text.strip() for text in harness]
    plots = _section(results, "plots", dict)
    if plots:
        sections.append(_plots_section(plots, run_dir))
    config = _section(results, "config", dict)
    if config:
        sections.append(_key_value_section("Hyper-parameters", config))
    stages = _section(results, "stages", list)
    if stages:
        sections.append(_stages_section(stages))
    devices = _section(results, "devices", dict)
    if devices:
        sections.append(_key_value_section("Devices", devices))
    versions = _section(results, "versions", dict)
    if versions:
        sections.append(_key_value_section("Versions", versions))
    return "\n\n".join(s for s in sections if s) + "\n"


def _json_default(value):
    """numpy scalars/arrays and paths, which the pipeline may hand over, as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"report results hold a {type(value).__name__}, which JSON cannot store")


def write_report(run_dir, results: dict, markdown=None):
    """Write `report.json` and `report.md` (`markdown`, else rendered from `results`) into
    `run_dir`, each atomically; returns their paths."""
    run_dir = os.fspath(run_dir)
    if markdown is None:
        markdown = render_report_md(results, run_dir)  # checks `results` before anything is written
    json_path = os.path.join(run_dir, "report.json")
    md_path = os.path.join(run_dir, "report.md")
    with atomic_open(json_path) as f:
        json.dump(results, f, indent=2, default=_json_default)
        f.write("\n")
    write_text(md_path, markdown)
    return json_path, md_path
