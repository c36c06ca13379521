"""`bash work.sh --task dpo` on its micro preset: SFT -> reward model -> DPO -> judge through the
real scripts on both backends, the report's contents, a run stopped after a stage that resumes
without redoing it, and bad flags refused in one line with exit status 2."""
import json
import math
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PREFERENCE_DATA") or os.path.join(
    ROOT, "..", "shared", "data", "instruct", "instruction-data-with-preference.json")
STAGES = ["data", "init", "sft", "reward", "dpo", "judge", "report"]


def work(*args, timeout=1200):
    return subprocess.run(["bash", "work.sh", "--task", "dpo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag,value,message", [
    ("--beta", "0", "argument --beta: must be a finite number > 0, got '0'"),
    ("--dpo_lr", "-1", "argument --dpo_lr: must be a finite number > 0"),
    ("--reward_trainable", "head", "argument --reward_trainable: invalid choice: 'head'"),
    ("--backends", "torch,tf", "argument --backends: must name torch and/or jittor")])
def test_bad_flags_are_refused_in_one_line(tmp_path, flag, value, message):
    proc = work("--preset", "micro", "--runs_dir", str(tmp_path / "runs"), flag, value,
                timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "dpo-micro").exists()


def test_bad_data_is_refused_before_the_run_folder_is_made(tmp_path):
    entries = [{"instruction": f"Say {i}.", "input": "", "chosen": f"Yes {i}.",
                "rejected": f"No {i}."} for i in range(40)]
    del entries[3]["rejected"]
    data = tmp_path / "p.json"
    data.write_text(json.dumps(entries), encoding="utf-8")
    proc = work("--preset", "micro", "--runs_dir", str(tmp_path / "runs"), "--data", str(data),
                timeout=120)
    assert proc.returncode == 1, proc.stderr  # work.sh's status for a stop on an error
    assert proc.stderr.strip().splitlines()[-1] == (
        f"work.sh: stopped: {data}: entry 3: has no 'rejected' (keys: ['chosen', 'input', "
        f"'instruction'])")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_micro_dpo_pipeline_reports_both_chains_and_resumes(tmp_path, vocab_dir):
    if not os.path.isfile(DATA):
        pytest.skip("no instruction-data-with-preference.json (set PREFERENCE_DATA)")
    argv = ["--preset", "micro", "--run", "smoke", "--runs_dir", str(tmp_path / "runs"),
            "--logs_dir", str(tmp_path / "logs"), "--data", DATA, "--vocab_dir", vocab_dir,
            "--exact_dropout"]
    first = work(*argv, "--until", "sft")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stopped after stage sft (--until)" in first.stdout
    proc = work(*argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("(done in an earlier run") == 3  # data, init, sft
    logs = tmp_path / "logs" / "smoke"
    report = json.loads((logs / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == STAGES[:-1]
    assert report["dpo"]["first_step_is_ln2"]
    for backend in ("torch", "jittor"):
        assert abs(report["dpo"][backend]["first_step_loss"] - math.log(2)) < 1e-5
        assert 0 <= report["reward"][backend]["test_reward_accuracy"] <= 1
        judged = report["judge"][backend]
        assert judged["prompts"] == 3 and 0 <= judged["dpo_win_rate"] <= 1
        assert judged["dpo_wins"] + judged["dpo_ties"] + judged["dpo_losses"] == 3
        for kind in ("sft", "reward", "dpo"):
            assert (logs / f"{backend}_{kind}_train_log.jsonl").is_file()
    for section in ("sft", "reward", "dpo", "judge"):  # torch - jittor beside every number
        assert set(report[section]["difference"]) >= set(report[section]["torch"]) - {"prompts"}
    assert report["dpo"]["difference"]["first_step_loss"] == pytest.approx(0, abs=1e-5)
    assert (logs / "dpo.png").stat().st_size > 0 and (logs / "sft_loss.png").is_file()
    md = (logs / "report.md").read_text()
    for heading in ("## SFT", "## Reward model", "## DPO", "## Win rate over the SFT model",
                    "### Example responses", "## Stage timings"):
        assert heading in md
    assert "| test_reward_accuracy |" in md and "| dpo_win_rate |" in md
    assert "ln 2 = 0.693147: the check (within 1e-5) holds" in md
    assert md.count("- torch dpo (reward") == 3 and md.count("- jittor sft (reward") == 3
    assert set(report["judge"]["identical_across_backends"]) == {"sft", "dpo"}
    assert "Responses identical in both backends: sft " in md
    again = work(*argv)
    assert again.returncode == 0 and again.stdout.count("(done in an earlier run") == 7
    changed = work(*argv, "--beta", "0.2")
    assert changed.returncode == 1 and "--beta 0.2 (the run has 0.1)" in changed.stderr
