"""`bash work.sh --task pretrain|classify` (shared/pipeline/task_pipelines.py): dispatch, data stages,
resume of finished stages, and one whole micro run with its report."""
import json
import os
import subprocess

import pytest

from alignment.task_fixtures import write_spam_file, write_text_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def work(tmp_path, vocab_dir, *argv):
    cmd = ["bash", "work.sh", *argv, "--runs_dir", str(tmp_path / "runs"),
           "--logs_dir", str(tmp_path / "logs"), "--vocab_dir", vocab_dir]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)


def test_pretrain_data_stage_and_resume(tmp_path, vocab_dir):
    text = write_text_file(tmp_path / "story.txt")
    argv = ("--task", "pretrain", "--preset", "micro", "--run", "p", "--text", str(text),
            "--until", "data")
    proc = work(tmp_path, vocab_dir, *argv)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(tmp_path / "runs" / "p" / "stages.json") as f:
        state = json.load(f)
    outputs = state["stages"]["data"]["outputs"]
    assert outputs["tokens"] == outputs["train_tokens"] + outputs["valid_tokens"] > 0
    again = work(tmp_path, vocab_dir, *argv)
    assert "(done in an earlier run" in again.stdout


def test_bad_text_file_stops_the_pipeline_with_its_name(tmp_path, vocab_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    proc = work(tmp_path, vocab_dir, "--task", "pretrain", "--preset", "micro", "--run", "bad",
                "--text", str(empty), "--until", "data")
    assert proc.returncode == 1 and f"{empty}: the file is empty" in proc.stderr


def test_unknown_task_is_refused(tmp_path, vocab_dir):
    proc = work(tmp_path, vocab_dir, "--task", "translate")
    assert proc.returncode == 2 and "invalid choice: 'translate'" in proc.stderr


@pytest.mark.slow
def test_classify_micro_run_reports_both_backends(tmp_path, vocab_dir):
    data = write_spam_file(tmp_path / "spam.tsv", n_lines=120)
    proc = work(tmp_path, vocab_dir, "--task", "classify", "--preset", "micro", "--run", "c",
                "--data", str(data))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "logs" / "c" / "report.json") as f:
        report = json.load(f)
    assert set(report["metrics"]) == {"torch", "jittor"}
    assert len(report["test_scoring"]) == 4
    matrices = {json.dumps(m["confusion_matrix"]) for m in report["test_scoring"].values()}
    assert len(matrices) == 1  # every model/backend pairing predicts the same labels
    assert report["loss_agreement"]["train"]["max_abs"] < 1e-4
    for name in ("report.md", "loss.png", "lr.png", "torch_train_log.jsonl"):
        assert os.path.isfile(tmp_path / "logs" / "c" / name)
    with open(tmp_path / "runs" / "c" / "data" / "test.tsv") as f:
        assert all("\t" in line for line in f)
