"""Preference data (reading, splitting, batches, what the cut does) and the reward/DPO scripts'
refusals of bad input, and DPO and reward-model runs that resume bit-exactly after a stop
signal."""
import json
import os
import signal

import numpy as np
import pytest

from shared.text.instruct_data import format_prompt
from shared.text.preference_data import (PreferenceDataError, PreferenceDataset,
                                         read_preference_entries, split_preference_entries)
from shared.text.tokenizer import EOT_ID, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n_embd", "32", "--n_layer", "1", "--n_head", "2"]


def entries(n=40):
    out = []
    for i in range(n):
        out.append({"instruction": f"Rewrite sentence {i} politely.",
                    "input": "Give me the salt." if i % 3 == 0 else "",
                    "output": "unused", "chosen": f"Could you pass the salt, please? ({i})",
                    "rejected": f"Salt. Now. ({i})"})
    return out


def write(path, items):
    path.write_text(json.dumps(items), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return load_tokenizer(vocab_dir)


@pytest.mark.parametrize("change,message", [
    (lambda e: e.pop("chosen"), "entry 1: has no 'chosen'"),
    (lambda e: e.update(rejected=""), "entry 1: 'rejected' is empty"),
    (lambda e: e.update(chosen=3), "entry 1: 'chosen' is a int, not a string"),
    (lambda e: e.update(instruction=" "), "entry 1: 'instruction' is empty")])
def test_a_bad_entry_is_named(tmp_path, change, message):
    items = entries(3)
    change(items[1])
    path = write(tmp_path / "p.json", items)
    with pytest.raises(PreferenceDataError, match=f"^{path}: {message}"):
        read_preference_entries(path)


def test_equal_pairs_are_refused_or_left_out_and_listed(tmp_path):
    items = entries(40)
    for i in (4, 17):
        items[i]["rejected"] = items[i]["chosen"]
    path = write(tmp_path / "p.json", items)
    with pytest.raises(PreferenceDataError) as info:
        split_preference_entries(path, 1)
    assert str(info.value).startswith(f"{path}: entry 4: 'chosen' and 'rejected' are the same")
    assert "2 such entries: [4, 17]" in str(info.value) and "--drop_equal_pairs" in str(info.value)
    splits, dropped = split_preference_entries(path, 1, drop_equal=True)
    assert dropped == [4, 17]
    ids = sorted(e["id"] for part in splits.values() for e in part)
    assert ids == [i for i in range(40) if i not in (4, 17)]
    for part in splits.values():  # each entry keeps its own file index
        assert all(e["chosen"] == items[e["id"]]["chosen"] for e in part)
    assert splits == split_preference_entries(path, 1, drop_equal=True)[0]  # seeded


def test_batches_hold_chosen_then_rejected_with_response_masks(tok):
    items = [dict(e, id=i) for i, e in enumerate(entries(3))]
    data = PreferenceDataset(items, tok, 3, 128)
    batch = data.collate([0, 1, 2])
    assert batch["input"].shape[0] == 6 and batch["input"].dtype == np.int64
    for row in range(6):
        entry = items[row % 3]
        prompt = tok.encode(format_prompt(entry))
        response = tok.encode(entry["chosen" if row < 3 else "rejected"]) + [EOT_ID]
        n = len(prompt) + len(response)
        assert batch["length"][row] == n
        assert batch["input"][row, :n].tolist() == prompt + response
        assert (batch["input"][row, n:] == EOT_ID).all()
        scored = batch["target"][row][batch["mask"][row] == 1].tolist()
        assert scored == response  # exactly the response tokens, each predicted once
    fixed = PreferenceDataset(items, tok, 3, 128, fixed_width=True).collate([0, 1, 2])
    assert fixed["input"].shape == (6, 128)


def test_cut_pairs_are_counted_and_a_split_of_prompts_only_refused(tok):
    items = [dict(e, id=i) for i, e in enumerate(entries(6))]
    prompt_len = min(len(tok.encode(format_prompt(e))) for e in items)
    data = PreferenceDataset(items, tok, 2, prompt_len + 2, name="train split")
    counts = data.counts()
    assert counts["pairs"] + counts["dropped_prompt_fills_seq_len"] \
        + counts["dropped_equal_once_cut"] == 6
    assert counts["cut"] == counts["pairs"] > 0
    assert data.truncation_report().startswith(f"train split: {counts['pairs']} of")
    with pytest.raises(PreferenceDataError, match="train split: no pair of its 6 entries fits "
                                                  f"--seq_len {prompt_len}: 6 prompts fill it"):
        PreferenceDataset(items, tok, 2, prompt_len, name="train split")


def run_main(script, argv, capsys):
    from importlib import import_module
    main = import_module(f"scripts.{script}").main
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("script,flags,message", [
    ("dpo_ft", ["--beta", "0"], "--beta: must be a finite number > 0"),
    ("dpo_ft", ["--beta", "-1"], "--beta: must be a finite number > 0"),
    ("reward_ft", ["--margin", "-0.1"], "--margin: must be a finite number >= 0"),
    ("reward_ft", ["--trainable", "lora"], "--trainable lora needs --lora_dim > 0")])
def test_scripts_refuse_bad_flags(tmp_path, vocab_dir, capsys, script, flags, message):
    data = write(tmp_path / "p.json", entries())
    status, err = run_main(script, ["--backend", "torch", "--device", "cpu", "--data", data,
                                    "--max_step", "1", "--vocab", vocab_dir, "--work_dir",
                                    str(tmp_path / "w"), *TINY, *flags], capsys)
    assert status == 2 and message in err, err
    assert not os.path.exists(tmp_path / "w")


def test_scripts_refuse_bad_data_writing_nothing(tmp_path, vocab_dir, capsys):
    items = entries()
    del items[7]["rejected"]
    bad = write(tmp_path / "bad.json", items)
    common = ["--backend", "torch", "--device", "cpu", "--max_step", "1", "--vocab", vocab_dir,
              "--no_progress", *TINY]
    status, err = run_main("dpo_ft", common + ["--data", bad, "--work_dir", str(tmp_path / "a")],
                           capsys)
    assert status == 2 and err.strip() == (f"error: {bad}: entry 7: has no 'rejected' (keys: "
                                           f"['chosen', 'input', 'instruction', 'output'])")
    good = write(tmp_path / "good.json", entries())
    status, err = run_main("reward_ft", common + ["--data", good, "--seq_len", "8",
                                                  "--work_dir", str(tmp_path / "b")], capsys)
    assert status == 2 and "no pair of its" in err and "prompts fill it" in err, err
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_a_reward_model_for_another_vocabulary_is_refused(tmp_path, vocab_dir, capsys):
    from shared.model.checkpoint import save_checkpoint
    from shared.model.config import GPT2Config
    from shared.model.params import init_state_dict
    other = save_checkpoint(tmp_path / "small_vocab.safetensors",
                            init_state_dict(GPT2Config(vocab_size=1000, n_embd=32, n_layer=1,
                                                       n_head=2), 0))
    status, err = run_main("reward_ft", ["--backend", "torch", "--device", "cpu", "--data",
                                         write(tmp_path / "p.json", entries()),
                                         "--init_checkpoint", str(other), "--max_step", "1",
                                         "--vocab", vocab_dir, "--no_progress", "--work_dir",
                                         str(tmp_path / "w"), *TINY], capsys)
    assert status == 2 and "small_vocab.safetensors" in err and "1000" in err, err


@pytest.mark.parametrize("task,metric,changed", [
    ("dpo", "rewards_margin", ("--beta", "0.2", "--beta: 0.1 -> 0.2")),
    ("reward", "reward_margin", ("--margin", "0.5", "--margin: 0.0 -> 0.5"))])
def test_dpo_and_reward_resume_bit_exactly_after_a_stop(tmp_path, vocab_dir, task, metric,
                                                        changed):
    from backends import dpo_backend, reward_backend
    from shared.model.checkpoint import read_checkpoint
    from shared.tasks.preference_task import (DATA_RESUME_KEYS, TASKS, build_preference_parser,
                                              preference_datasets, preference_problems)
    from shared.train.trainer import Trainer, TrainingInterrupted
    data = write(tmp_path / "p.json", entries())

    def trainer(work_dir, *extra, on_step=None):
        args = build_preference_parser(task).parse_args(
            ["--backend", "torch", "--device", "cpu", "--data", data, *TINY, "--lora_dim", "4",
             "--lora_dropout", "0.1", "--seq_len", "64", "--max_step", "6",
             "--train_batch_size", "4", "--lr", "0.01", "--save_interval", "2",
             "--eval_interval", "3", "--log_interval", "1", "--no_progress", "--attn", "math",
             "--work_dir", str(work_dir), *extra])
        assert preference_problems(args, task) == []
        sets = preference_datasets(args, load_tokenizer(vocab_dir))
        backend = {"dpo": dpo_backend, "reward": reward_backend}[task]("torch")
        return Trainer(args, backend, on_step=on_step, datasets=(sets["train"], sets["valid"]),
                       resume_keys=DATA_RESUME_KEYS + TASKS[task]["resume_keys"])

    def log(work_dir):
        with open(work_dir / "train_log.jsonl") as f:
            return [(r["step"], r["loss"], r[metric]) for r in map(json.loads, f)
                    if r["kind"] == "train"]

    trainer(tmp_path / "whole").train()

    def interrupt(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(TrainingInterrupted):
        trainer(tmp_path / "cut", on_step=interrupt).train()
    with pytest.raises(Exception, match=changed[2]):
        trainer(tmp_path / "cut", "--resume", *changed[:2]).train()
    trainer(tmp_path / "cut", "--resume").train()
    assert log(tmp_path / "cut") == log(tmp_path / "whole")
    assert [s for s, _, _ in log(tmp_path / "whole")] == list(range(1, 7))
    whole, cut = (read_checkpoint(tmp_path / d / "model.6.pt") for d in ("whole", "cut"))
    assert sorted(whole) == sorted(cut)
    assert all(np.array_equal(whole[k], cut[k]) for k in whole)
