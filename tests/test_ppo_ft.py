"""scripts/ppo_ft.py: the rollout's layout, refusals of bad flags and of a reward model that does
not fit (one line, status 2, nothing written), and a run that resumes bit-exactly after a stop
signal in the middle of a PPO iteration (the rollout and the adaptive KL coefficient restored)."""
import json
import os
import shutil
import signal

import numpy as np
import pytest

from shared.text.tokenizer import EOT_ID

TINY = ["--n_embd", "32", "--n_layer", "1", "--n_head", "2", "--seq_len", "64", "--no_progress",
        "--device", "cpu"]


def entries(n=40):
    return [{"instruction": f"Rewrite sentence {i} politely.",
             "input": "Give me the salt." if i % 3 == 0 else "",
             "chosen": f"Could you pass the salt, please? ({i})", "rejected": f"Salt. Now. ({i})"}
            for i in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppo_data") / "p.json"
    path.write_text(json.dumps(entries()), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, data, vocab_dir):
    from scripts.reward_ft import main
    work = tmp_path_factory.mktemp("reward")
    assert main(["--backend", "torch", "--data", data, "--vocab", vocab_dir, *TINY,
                 "--max_step", "2", "--train_batch_size", "4", "--lr", "1e-3",
                 "--work_dir", str(work)]) == 0
    return str(work)


def ppo_argv(data, vocab_dir, reward_model, work_dir, *extra):
    return ["--backend", "torch", "--data", data, "--vocab", vocab_dir, *TINY,
            "--reward_model", reward_model, "--lora_dim", "4", "--rollout_batch", "4",
            "--train_batch_size", "2", "--response_len", "8", "--ppo_epochs", "1",
            "--max_epoch", "3", "--lr", "0.01", "--attn", "math", "--work_dir", str(work_dir),
            *extra]


def run_main(argv, capsys):
    from scripts.ppo_ft import main
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def test_rollout_rows_hold_prompt_then_response_with_its_mask():
    from shared.tasks.ppo_task import sequences, to_columns, to_positions, with_eos
    assert with_eos([5, 6], 4) == [5, 6, EOT_ID]  # stopped by <|endoftext|>: it is kept
    assert with_eos([5, 6, 7, 8], 4) == [5, 6, 7, 8]  # stopped by the length
    batch = sequences([[1, 2, 3], [4]], [[5, 6, EOT_ID], [7, 8]])
    assert batch["input"].tolist() == [[1, 2, 3, 5, 6, EOT_ID], [4, 7, 8, EOT_ID, EOT_ID, EOT_ID]]
    assert batch["mask"].tolist() == [[0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]]
    assert batch["target"][0, 2:5].tolist() == [5, 6, EOT_ID]  # the positions the mask marks
    assert batch["length"].tolist() == [6, 3] and batch["start"].tolist() == [2, 0]
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    columns = to_columns(values, batch["start"], [3, 2], 3)
    assert columns.tolist() == [[2, 3, 4], [6, 7, 0]]
    assert np.array_equal(to_positions(columns, batch["start"], [3, 2], (2, 6)),
                          values * batch["mask"])


@pytest.mark.parametrize("flags,message", [
    (["--kl_coef", "-0.1"], "--kl_coef: must be a finite number >= 0"),
    (["--clip_range", "0"], "--clip_range: must be a finite number > 0"),
    (["--value_clip", "-1"], "--value_clip: must be a finite number > 0"),
    (["--target_kl", "0"], "--target_kl: must be a finite number > 0"),
    (["--gamma", "1.5"], "--gamma: must be a finite number in [0, 1]"),
    (["--rollout_batch", "5"], "--rollout_batch 5 is not a multiple of --train_batch_size 2"),
    (["--peft", "bitfit"], "--peft bitfit: PPO trains LoRA (--lora_dim > 0) or every weight"),
    (["--response_len", "64"], "--response_len 64 leaves no room for a prompt")])
def test_bad_flags_are_one_line_writing_nothing(tmp_path, data, vocab_dir, reward_model, capsys,
                                                flags, message):
    status, err = run_main(ppo_argv(data, vocab_dir, reward_model, tmp_path / "w", *flags), capsys)
    assert status == 2 and message in err, err
    assert not os.path.exists(tmp_path / "w")


def test_a_reward_model_that_does_not_fit_is_refused(tmp_path, data, vocab_dir, reward_model,
                                                     capsys):
    from shared.model.checkpoint import read_checkpoint, save_checkpoint
    other = tmp_path / "small_vocab"
    other.mkdir()
    shutil.copy(os.path.join(reward_model, "reward_model.json"), other)
    state = {k[len("module."):]: v for k, v in
             read_checkpoint(os.path.join(reward_model, "model.2.pt")).items()}
    state["transformer.wte.weight"] = state["transformer.wte.weight"][:1000]
    save_checkpoint(other / "model.2.pt", state)
    status, err = run_main(ppo_argv(data, vocab_dir, str(other), tmp_path / "w"), capsys)
    assert status == 2 and "small_vocab/model.2.pt" in err and "1000 tokens" in err, err
    status, err = run_main(ppo_argv(data, vocab_dir, str(tmp_path), tmp_path / "w"), capsys)
    assert status == 2 and "no reward_model.json there" in err, err
    assert not os.path.exists(tmp_path / "w")


def test_test_prompts_without_room_are_refused_before_training(tmp_path, vocab_dir,
                                                               reward_model, capsys):
    """Every test prompt leaves less than --response_len + 1 tokens (its pairs still fit, cut):
    the held-out comparison would have nothing to compare, so the run is refused up front."""
    from shared.text.instruct_data import format_prompt
    from shared.text.preference_data import split_preference_entries
    from shared.text.tokenizer import load_tokenizer
    tok = load_tokenizer(vocab_dir)
    items = entries()
    path = tmp_path / "p.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    for entry in split_preference_entries(str(path), 123)[0]["test"]:
        item = items[entry["id"]]
        while len(tok.encode(format_prompt(item))) < 60:  # 60 + 8 + 1 > --seq_len 64
            item["instruction"] += " please"
    path.write_text(json.dumps(items), encoding="utf-8")
    status, err = run_main(ppo_argv(str(path), vocab_dir, reward_model, tmp_path / "w"), capsys)
    assert status == 2, err
    assert (f"prompts of the test split of {path}: none leaves --response_len 8 + 1 tokens "
            f"within --seq_len 64") in err
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("lora_dim", ["4", "0"])
def test_ppo_resumes_bit_exactly_after_a_stop(tmp_path, data, vocab_dir, reward_model, lora_dim):
    """LoRA (4) or every weight (0): the run stopped in its second iteration and resumed logs
    and ends as the one run through; the value head rides in the trainer state."""
    from backends import ppo_backend
    from shared.model.checkpoint import (load_trainer_state, normalize_state_dict,
                                         read_checkpoint)
    from shared.model.params import init_state_dict
    from shared.tasks.ppo_task import build_ppo_parser, ppo_problems, train_ppo
    from shared.train.train_args import model_config, validate
    from shared.train.trainer import TrainingError, TrainingInterrupted

    def parse(work_dir, *extra):
        args = build_ppo_parser().parse_args(ppo_argv(
            data, vocab_dir, reward_model, work_dir, "--target_kl", "0.01", "--kl_horizon", "10",
            "--ptx_coef", "0.5", "--save_interval", "100", "--log_interval", "1",
            "--eval_prompts", "2", "--lora_dim", lora_dim, "--tensorboard", f"{work_dir}_tb",
            *extra))
        assert ppo_problems(args) == []
        return validate(args, data_files=False)

    def train(work_dir, *extra, on_step=None):
        return train_ppo(parse(work_dir, *extra), ppo_backend, on_step=on_step)

    def log(work_dir):
        with open(work_dir / "train_log.jsonl") as f:
            return [(r["step"], r["loss"], r["reward"], r["kl"], r["kl_coef"])
                    for r in map(json.loads, f) if r["kind"] == "train"]

    whole = train(tmp_path / "whole")

    def interrupt(step):
        if step == 3:  # the first minibatch of iteration 2
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        train(tmp_path / "cut", on_step=interrupt)
    with pytest.raises(TrainingError, match="--kl_coef: 0.2 -> 0.3"):
        train(tmp_path / "cut", "--resume", "--kl_coef", "0.3")
    cut = train(tmp_path / "cut", "--resume")
    assert log(tmp_path / "cut") == log(tmp_path / "whole")
    records = log(tmp_path / "whole")
    assert [r[0] for r in records] == list(range(1, 7))
    assert len({r[4] for r in records}) == 3  # the adaptive coefficient moved at each rollout
    weights = [read_checkpoint(tmp_path / d / "model.6.pt") for d in ("whole", "cut")]
    assert sorted(weights[0]) == sorted(weights[1])
    assert not any("v_head" in k for k in weights[0])  # the final: the policy only
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    middle = read_checkpoint(tmp_path / "cut" / "model.3.pt")
    assert not any("v_head" in k for k in middle)
    _, arrays = load_trainer_state(tmp_path / "cut" / "trainer_state.3.npz")
    assert arrays["value_head/v_head.weight"].shape == (32, 1)
    assert whole["test"] == cut["test"]
    # TensorBoard: PPO's curves, every step once after the resume, as in the run through
    from test_tensorboard_log import scalars
    curves = [scalars(f"{tmp_path / d}_tb") for d in ("whole", "cut")]
    for tag in ("train/loss", "train/reward", "train/kl", "train/entropy", "train/clip_fraction",
                "train/value_loss", "train/returns"):
        assert [s for s, _ in curves[0][tag]] == list(range(1, 7)), tag
        assert curves[0][tag] == curves[1][tag], tag
    with open(tmp_path / "whole" / "train_summary.json") as f:
        summary = json.load(f)
    args = parse(tmp_path / "whole")
    start = init_state_dict(model_config(args), args.random_seed)  # the seeded starting policy
    if lora_dim == "0":  # every weight trained, the checkpoints hold the whole policy
        assert summary["trainable_params"] == summary["all_params"]
        assert not any("lora" in k for k in middle) and len(middle) == len(weights[0])
        final = normalize_state_dict(weights[0], "model.6.pt")
        changed = [k for k in start if not np.array_equal(start[k], final[k])]
        assert "transformer.wte.weight" in changed and len(changed) > len(start) // 2
    else:  # the LoRA matrices (and the value head) only
        assert summary["trainable_params"] < summary["all_params"] // 10
        assert middle and all("lora" in k for k in middle)
