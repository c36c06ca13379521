"""The pipeline report: Markdown with every section there is data for, JSON that round-trips."""
import json
import re

import numpy as np
import pytest

from shared.pipeline.report import markdown_table, render_report_md, thin_rows, write_report


def full_results(n_steps=100):
    table = [{"step": s, "torch": 5.0 / s, "jittor": 5.0 / s + 1e-6, "abs_diff": 1e-6}
             for s in range(1, n_steps + 1)]
    return {
        "run": "e2e-small",
        "created": "2026-01-02T03:04:05",
        "devices": {"torch": "cuda:0 NVIDIA H100", "jittor": {"device": "cuda", "cc": "9.0"}},
        "versions": {"python": "3.11", "torch": "2.13", "jittor": "1.3.11"},
        "config": {"lr": 2e-4, "train_batch_size": 8, "lora_dim": 4, "model_card": "gpt2.sm"},
        "stages": [{"name": "train torch", "seconds": 120.5, "status": "ok"},
                   {"name": "train jittor", "seconds": 130.25, "status": "ok"},
                   {"name": "beam torch", "seconds": 10.0, "status": "failed"}],
        "metrics": {"torch": {"BLEU": 0.6812, "NIST": 8.65, "METEOR": 0.46},
                    "jittor": {"BLEU": 0.6800, "NIST": 8.66, "CIDEr": 2.4}},
        "loss_agreement": {
            "train": {"n_steps": n_steps, "max_abs": 1e-6, "mean_abs": 1e-6, "max_rel": 2e-5,
                      "first_step_over": None, "tol": 1e-3},
            "valid": {"n_steps": 2, "max_abs": 3e-7, "mean_abs": 2e-7, "max_rel": 1e-7,
                      "first_step_over": None, "tol": 1e-3}},
        "loss_table": table,
        "final_check": {"logits_max_abs": 2.5e-5, "grad_max_abs": 1.25e-6},
        "plots": {"loss": "loss.png", "lr": "lr.png"},
        "beam_agreement": {"identical_predictions": 628, "total": 630},
    }


def table_rows(md, header_start):
    """Body rows of the Markdown table whose header line starts with `header_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_full_report(tmp_path):
    (tmp_path / "loss.png").write_bytes(b"png")
    results = full_results()
    json_path, md_path = write_report(tmp_path, results)
    assert json.loads(open(json_path).read()) == results
    md = open(md_path).read()
    assert md.startswith("# Report: e2e-small\n")
    summary = md.split("\n\n")[2]
    assert "at most 1e-06 over 100 common steps" in summary
    assert "628 of 630 beam-search predictions are identical" in summary
    assert "BLEU torch 0.6812 vs jittor 0.68" in summary

    metrics = table_rows(md, "| metric |")
    assert metrics[0] == ["BLEU", "0.6812", "0.68", "0.0012"]
    assert ["METEOR", "0.46", "-", "-"] in metrics and ["CIDEr", "-", "2.4", "-"] in metrics
    assert "| metric | torch | jittor | torch - jittor |" in md

    assert table_rows(md, "| loss | n_steps")[0] == ["train", "100", "1e-06", "1e-06", "2e-05",
                                                     "-", "0.001"]
    steps = [int(r[0]) for r in table_rows(md, "| step | torch | jittor | abs_diff |")]
    assert len(steps) <= 40 and steps[0] == 1 and steps[-1] == 100
    assert steps == sorted(set(steps))
    assert "40 of 100 steps shown" in md

    assert ["logits_max_abs", "2.5e-05"] in table_rows(md, "| name | value |")
    stages = table_rows(md, "| stage |")
    assert stages[-1] == ["total", "260.75", ""] and ["beam torch", "10", "failed"] in stages
    assert "| jittor.device | cuda |" in md and "| model_card | gpt2.sm |" in md
    assert "![loss](loss.png)" in md
    assert "- lr: `lr.png` was not written" in md


def test_minimal_report_omits_missing_sections(tmp_path):
    json_path, md_path = write_report(tmp_path / "run7", {"metrics": {"torch": {"BLEU": 0.5}}})
    md = open(md_path).read()
    assert md.startswith("# Report: run7\n")
    for absent in ("## Loss", "## Plots", "## Stage timings", "## Devices", "## Final check"):
        assert absent not in md
    assert table_rows(md, "| metric |") == [["BLEU", "0.5"]]
    empty = render_report_md({"plots": {}, "stages": [], "loss_table": []})
    assert "No comparison results" in empty and "##" not in empty


def test_absolute_plot_paths_become_relative(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(b"png")
    md = render_report_md({"plots": {"loss": str(tmp_path / "plots" / "loss.png")}}, str(tmp_path))
    assert "![loss](plots/loss.png)" in md


def test_json_accepts_numpy_values(tmp_path):
    results = {"final_check": {"logits_max_abs": np.float32(0.5), "shape": np.array([2, 3])}}
    json_path, md_path = write_report(tmp_path, results)
    assert json.loads(open(json_path).read()) == {"final_check": {"logits_max_abs": 0.5,
                                                                  "shape": [2, 3]}}
    assert "| logits_max_abs | 0.5 |" in open(md_path).read()


def test_bad_results_are_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"results\['stages'\] must be a list"):
        write_report(tmp_path, {"stages": {"train": 3}})
    with pytest.raises(TypeError, match="JSON cannot store"):
        write_report(tmp_path, {"config": {"f": object()}})
    assert not (tmp_path / "report.md").exists()


def test_thin_rows_and_table_helpers():
    rows = list(range(1000))
    thinned = thin_rows(rows, 40)
    assert len(thinned) == 40 and thinned[0] == 0 and thinned[-1] == 999
    assert thin_rows(rows[:5], 40) == rows[:5]
    md = markdown_table(["a", "b"], [["x|y", None], [1.23456789, 2]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | - |", "| 1.23457 | 2 |"]
    assert re.fullmatch(r"(\|[^\n]*\|\n?)+", md)


def test_summary_says_how_dropout_masks_were_drawn(tmp_path):
    results = full_results()
    results["config"] = dict(results.get("config") or {}, lora_dropout=0.1, exact_dropout=False)
    md = render_report_md(results)
    summary = md.split("\n\n")[2]
    assert "each framework's own generator" in summary and "--exact_dropout" in summary
    results["config"]["exact_dropout"] = True
    summary = render_report_md(results).split("\n\n")[2]
    assert "one backend-neutral generator" in summary
    results["config"]["lora_dropout"] = 0.0
    summary = render_report_md(results).split("\n\n")[2]
    assert "dropout" not in summary
