"""`bash work.sh --task instruct` on its micro preset: every stage through the real scripts, both
backends in the report, and a rerun that skips the finished stages."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_micro_instruct_pipeline(tmp_path, vocab_dir):
    data = os.environ.get("INSTRUCT_DATA") or os.path.join(ROOT, "..", "shared", "data",
                                                           "instruct", "instruction-data.json")
    if not os.path.isfile(data):
        pytest.skip("no instruction-data.json (set INSTRUCT_DATA)")
    argv = ["bash", "work.sh", "--task", "instruct", "--preset", "micro", "--run", "smoke",
            "--runs_dir", str(tmp_path / "runs"), "--logs_dir", str(tmp_path / "logs"),
            "--data", data, "--vocab_dir", vocab_dir]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "logs" / "smoke" / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["data", "init", "tune", "eval", "check"]
    for backend in ("torch", "jittor"):
        metrics = report["metrics"][backend]
        assert 0 <= metrics["ROUGE_L"] <= 1 and metrics["test_ppl"] > 1
        assert metrics["test_entries"] == 3
    assert report["loss_agreement"]["train"]["n_steps"] == 4
    assert report["final_check"]["passed"]
    assert report["response_agreement"]["total"] == 3
    md = (tmp_path / "logs" / "smoke" / "report.md").read_text()
    assert "| ROUGE_L |" in md and "## Responses on the test split" in md
    assert os.listdir(tmp_path / "runs" / "smoke" / "torch" / "tensorboard")
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("(done in an earlier run") == 6
    bad = subprocess.run(["bash", "work.sh", "--task", "nope"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr
