"""`bash work.sh --task rlhf` on its micro preset: SFT -> reward model -> PPO -> judge through the
real scripts on both backends, the report's PPO section (reward, KL and coefficient curves,
torch - jittor beside every number), and bad flags refused in one line with exit status 2."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PREFERENCE_DATA") or os.path.join(
    ROOT, "..", "shared", "data", "instruct", "instruction-data-with-preference.json")
STAGES = ["data", "init", "sft", "reward", "ppo", "judge", "report"]


def work(*args, timeout=1200):
    return subprocess.run(["bash", "work.sh", "--task", "rlhf", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flag,value,message", [
    ("--kl_coef", "-0.1", "argument --kl_coef: must be a finite number >= 0, got '-0.1'"),
    ("--target_kl", "0", "argument --target_kl: must be a finite number > 0"),
    ("--ppo_lr", "0", "argument --ppo_lr: must be a finite number > 0"),
    ("--ppo_epochs", "0", "argument --ppo_epochs: must be an integer >= 1")])
def test_bad_flags_are_refused_in_one_line(tmp_path, flag, value, message):
    proc = work("--preset", "micro", "--runs_dir", str(tmp_path / "runs"), flag, value,
                timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs" / "rlhf-micro").exists()


@pytest.mark.slow
def test_micro_rlhf_pipeline_reports_ppo_on_both_backends(tmp_path, vocab_dir):
    if not os.path.isfile(DATA):
        pytest.skip("no instruction-data-with-preference.json (set PREFERENCE_DATA)")
    proc = work("--preset", "micro", "--run", "smoke", "--runs_dir", str(tmp_path / "runs"),
                "--logs_dir", str(tmp_path / "logs"), "--data", DATA, "--vocab_dir", vocab_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = tmp_path / "logs" / "smoke"
    report = json.loads((logs / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == STAGES[:-1]
    for backend in ("torch", "jittor"):
        ppo = report["ppo"][backend]
        assert ppo["iterations"] == 2 and ppo["first_kl"] == 0  # the policy starts as the reference
        judged = report["judge"][backend]
        assert judged["prompts"] == 3 and 0 <= judged["ppo_win_rate"] <= 1
        assert (logs / f"{backend}_ppo_train_log.jsonl").is_file()
    assert set(report["ppo"]["difference"]) == set(report["ppo"]["torch"])
    for name, gap in report["ppo"]["max_abs_difference_per_step"].items():
        assert gap < 1e-3, name  # the same rollouts: the chains agree to rounding
    assert (logs / "ppo.png").stat().st_size > 0 and (logs / "ppo_details.png").is_file()
    md = (logs / "report.md").read_text()
    for heading in ("## SFT", "## Reward model", "## PPO", "## Win rate over the SFT model"):
        assert heading in md
    assert "| last_kl_coef |" in md and "| ppo_win_rate |" in md
