"""CI smoke test of `bash work.sh`: the whole pipeline on a micro configuration (a few steps).

Checks that every stage runs through the real scripts, that the report's numbers are present
and sensible, that the plots are real images, and that a rerun skips finished stages.
"""
import json
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, e2e_dir, vocab_dir):
    base = tmp_path_factory.mktemp("pipeline")
    argv = ["bash", "work.sh", "--preset", "micro", "--run", "smoke", "--runs_dir", str(base / "runs"),
            "--logs_dir", str(base / "logs"), "--data_dir", e2e_dir, "--vocab_dir", vocab_dir]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return base, argv, proc.stdout


def test_report_has_both_backends_side_by_side(pipeline_run):
    base, _, _ = pipeline_run
    with open(base / "logs" / "smoke" / "report.json") as f:
        report = json.load(f)
    for backend in ("torch", "jittor"):
        metrics = report["metrics"][backend]
        assert set(metrics) >= {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
        assert all(np.isfinite(v) and v >= 0 for k, v in metrics.items() if k in
                   ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"))
    agreement = report["loss_agreement"]["train"]
    assert agreement["n_steps"] == 6
    assert 0 <= agreement["max_abs"] < 0.05  # dropout masks differ, the base and data do not
    assert len(report["loss_table"]) == 6
    check = report["final_check"]
    assert check["passed"] and check["logits_max_abs"] < 1e-3 and check["grad_params"] == 4
    beams = report["beam_agreement"]
    predictions = []
    for backend in ("torch", "jittor"):
        with open(base / "runs" / "smoke" / backend / "predict.jsonl") as f:
            predictions.append([json.loads(line)["predict"] for line in f])
    assert beams["total"] == 6  # one per MR
    assert beams["identical_predictions"] == sum(p == q for p, q in zip(*predictions))
    assert [s["name"] for s in report["stages"]] == ["data", "init", "lora", "beam", "check", "metrics"]
    assert report["versions"]["jittor"] and report["versions"]["torch"]
    with open(base / "logs" / "smoke" / "report.md") as f:
        md = f.read()
    assert "| BLEU |" in md and "![loss](loss.png)" in md


@pytest.mark.parametrize("name", ["loss.png", "lr.png", "base_loss.png"])
def test_plots_are_real_images(pipeline_run, name):
    from matplotlib.image import imread
    base, _, _ = pipeline_run
    image = imread(base / "logs" / "smoke" / name)
    height, width = image.shape[:2]
    assert 600 <= height <= 2000 and 800 <= width <= 3000
    assert image[..., :3].std() > 0.01  # not blank


def test_rerun_skips_finished_stages(pipeline_run):
    base, argv, _ = pipeline_run
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0
    assert proc.stdout.count("done in an earlier run") == 7
