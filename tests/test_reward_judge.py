"""The reward model's judgement of policies (shared/tasks/reward_judge.py): win rates with ties
counted half and identical responses tied, the reward batches, the held-out prompts, the same seed for every policy, and
scripts/reward_judge.py's refusals and a real run on a tiny reward model."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shared.tasks.reward_judge import held_out_prompts, judge, reward_batch, win_rate
from shared.text.preference_data import split_preference_entries
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_embd", "32", "--n_layer", "1", "--n_head", "2"]


def entries(n=40):
    return [{"instruction": f"Rewrite sentence {i} politely.", "input": "",
             "chosen": f"Could you pass the salt, please? ({i})", "rejected": f"Salt. ({i})"}
            for i in range(n)]


def write(path, items):
    path.write_text(json.dumps(items), encoding="utf-8")
    return str(path)


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 1.0, 3.0]) == {
        "wins": 1, "ties": 2, "losses": 1, "win_rate": 0.5}
    assert win_rate([2.0], [1.0])["win_rate"] == 1.0
    with pytest.raises(ValueError, match="same non-empty prompts"):
        win_rate([1.0], [1.0, 2.0])


def test_identical_responses_tie_whatever_their_rewards():
    """The same tokens scored a rounding error apart (in a batch padded otherwise) tie; a
    different response with the same reward ties too; the rest are wins and losses."""
    noise = 2.384185791015625e-07
    rate = win_rate([1.0 + noise, 2.0, 3.0, 0.5, 4.0], [1.0, 2.0 + noise, 3.0, 1.0, 3.0],
                    identical=[True, True, False, False, False])
    assert rate == {"wins": 1, "ties": 3, "losses": 1, "win_rate": 0.5,
                    "identical_responses": 2}
    assert win_rate([1.0 + noise], [1.0])["win_rate"] == 1.0  # by rewards alone: a win
    with pytest.raises(ValueError, match="one identical flag per prompt"):
        win_rate([1.0, 2.0], [1.0, 2.0], identical=[True])


def test_reward_batch_pads_with_eot_and_keeps_lengths():
    batch = reward_batch([[1, 2, 3], [4]])
    assert batch["input"].tolist() == [[1, 2, 3], [4, EOT_ID, EOT_ID]]
    assert batch["length"].tolist() == [3, 1]


def test_held_out_prompts_are_the_test_split_and_too_long_ones_are_counted(tmp_path, vocab_dir):
    tok = load_tokenizer(vocab_dir)
    items = entries()
    items[5]["instruction"] = "word " * 300
    path = write(tmp_path / "p.json", items)
    test = split_preference_entries(path, 7, drop_equal=True)[0]["test"]
    prompts, too_long = held_out_prompts(path, 7, None, None, tok, 100)
    long_in_test = [e["id"] for e in test if e["id"] == 5]
    assert too_long == long_in_test
    assert [e["id"] for e, _ in prompts] == [e["id"] for e in test if e["id"] != 5]
    assert len(held_out_prompts(path, 7, None, 1, tok, 100)[0]) == 1


def test_judge_samples_every_policy_with_the_same_seed_and_scores_prompt_plus_response():
    prompts = [({"id": 3, "instruction": "a", "input": "", "chosen": "x"}, [10, 11]),
               ({"id": 8, "instruction": "b", "input": "", "chosen": "y"}, [12])]
    seeds = {}

    def policy(name, tokens):
        def sample(ids, settings, seed):
            seeds.setdefault(name, []).append(seed)
            return tokens(ids)
        return sample
    policies = {"sft": policy("sft", lambda ids: [1]),
                "dpo": policy("dpo", lambda ids: [1] if ids == [12] else [2, 2])}
    scored = []

    def score(batch):  # longer answers win; the batch's width adds noise, as padding may
        scored.append(batch["input"].tolist())
        return batch["length"].astype(np.float64) + 1e-7 * batch["input"].shape[1]
    out = judge(prompts, policies, score, None, seed=5)
    assert seeds == {"sft": [5, 6], "dpo": [5, 6]}
    assert scored[0] == [[10, 11, 1, EOT_ID], [12, 1, EOT_ID, EOT_ID]]
    assert out["win_rates"]["dpo"] == {"wins": 1, "ties": 1, "losses": 0, "win_rate": 0.75,
                                       "identical_responses": 1}
    assert out["policies"]["dpo"]["mean_tokens"] == 1.5
    rewards = [r["rewards"] for r in out["responses"]]
    assert rewards[1]["dpo"] > rewards[1]["sft"]  # the same response, scored apart: a tie
    assert np.allclose([[r["sft"], r["dpo"]] for r in rewards], [[4, 5], [3, 3]])


def run_judge(args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "scripts/reward_judge.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_reward_judge_refuses_bad_arguments_in_one_line(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    proc = run_judge(["--backend", "torch", "--policies", f"sft={model}", "--reward_model",
                      str(tmp_path), "--out", str(tmp_path / "j.json")])
    assert proc.returncode == 2
    assert "--policies needs a baseline and at least one policy" in proc.stderr
    assert f"--reward_model {tmp_path}: no reward_model.json" in proc.stderr
    proc = run_judge(["--backend", "torch", "--policies", "sft", "--reward_model", "r",
                      "--out", "j.json"])
    assert proc.returncode == 2 and "expected NAME=CHECKPOINT, got 'sft'" in proc.stderr
    assert not (tmp_path / "j.json").exists()


@pytest.mark.slow
def test_reward_judge_runs_a_reward_model_on_two_policies(tmp_path, vocab_dir):
    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import GPT2Config
    from shared.model.params import init_state_dict
    data = write(tmp_path / "p.json", entries())
    env = dict(os.environ, PYTHONPATH=ROOT)
    reward = subprocess.run(
        [sys.executable, "scripts/reward_ft.py", "--backend", "torch", "--device", "cpu",
         "--data", data, *TINY, "--trainable", "all", "--max_step", "2", "--seq_len", "64",
         "--vocab", vocab_dir, "--no_progress", "--work_dir", str(tmp_path / "reward")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert reward.returncode == 0, reward.stderr[-2000:]
    config = GPT2Config.from_model_card("gpt2.sm", n_embd=32, n_layer=1, n_head=2)
    for name, seed in (("a", 0), ("b", 1)):
        save_checkpoint(str(tmp_path / f"{name}.safetensors"), init_state_dict(config, seed))
    proc = run_judge(["--backend", "torch", "--device", "cpu", *TINY, "--data", data,
                      "--policies", f"sft={tmp_path / 'a.safetensors'}",
                      f"dpo={tmp_path / 'b.safetensors'}", "--reward_model",
                      str(tmp_path / "reward"), "--seq_len", "64", "--max_new_tokens", "5",
                      "--vocab", vocab_dir, "--out", str(tmp_path / "judge" / "judge.json")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "judge" / "judge.json").read_text())
    rate = result["win_rates"]["dpo"]
    assert rate["wins"] + rate["ties"] + rate["losses"] == result["prompts"] == 4
    assert 0 <= rate["win_rate"] <= 1 and result["baseline"] == "sft"
    rows = [json.loads(line) for line in open(tmp_path / "judge" / "responses.jsonl")]
    assert len(rows) == 4 and set(rows[0]["responses"]) == {"sft", "dpo"}
    assert "dpo over sft: win rate" in proc.stdout
    # a reward model for another tokenizer size: one line, status 2, nothing written
    from shared.model.checkpoint import read_checkpoint
    small = tmp_path / "small_vocab"
    small.mkdir()
    card = json.loads((tmp_path / "reward" / "reward_model.json").read_text())
    (small / "reward_model.json").write_text(json.dumps(card))
    state = {k.removeprefix("module."): v for k, v in
             read_checkpoint(str(tmp_path / "reward" / card["checkpoint"])).items()}
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:1000]
    save_checkpoint(str(small / card["checkpoint"]), state)
    proc = run_judge(["--backend", "torch", "--device", "cpu", *TINY, "--data", data,
                      "--policies", f"sft={tmp_path / 'a.safetensors'}",
                      f"dpo={tmp_path / 'b.safetensors'}", "--reward_model", str(small),
                      "--seq_len", "64", "--max_new_tokens", "5", "--vocab", vocab_dir,
                      "--out", str(tmp_path / "other" / "judge.json")])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "a reward model for a tokenizer of 1000 tokens; the policy's has 50257" in proc.stderr
    assert not (tmp_path / "other").exists()
