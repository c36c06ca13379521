"""The win rate of tuned policies over a baseline on held-out prompts, as a reward model judges
them (`scripts/reward_judge.py`; work.sh --task dpo's judge stage).

The prompts are the preference file's test split (shared/text/preference_data.py, the split
reward_ft.py and dpo_ft.py hold out). Every policy answers every prompt with the backend-neutral
sampler (shared/decode/sampling.py) from the same seed (`seed + prompt index`), so the draws are
the same uniform numbers for each policy and each backend; the reward model scores prompt +
response + <|endoftext|>, the sequence layout it was trained on. A policy wins a prompt when its
response gets the higher reward; a tie counts half. Two identical responses (the same tokens) are
a tie whatever their rewards: the reward model scores each policy's responses in batches of their
own, padded to their own widths, so the same sequence can score a rounding error apart (a win or a
loss by float noise otherwise). Ties are reported beside wins and losses, and how many of them
were identical responses.
Prompts whose tokens plus `max_new_tokens` do not fit `seq_len` are left out and counted.
Everything here is backend-free: the script hands in the sampling and scoring functions.
"""
from __future__ import annotations

import numpy as np

from shared.text.instruct_data import format_prompt
from shared.text.preference_data import split_preference_entries
from shared.text.tokenizer import EOT_ID


def held_out_prompts(data, split_seed, limit, count, tokenizer, room) -> tuple:
    """([(entry, prompt ids)] of the first `count` test-split entries (None: all) whose prompt
    leaves `room` tokens free, [file indices of those left out for want of room])."""
    splits, _ = split_preference_entries(data, split_seed, limit=limit, drop_equal=True)
    kept, too_long = [], []
    for entry in splits["test"]:
        ids = tokenizer.encode(format_prompt(entry))
        if len(ids) > room:
            too_long.append(entry["id"])
        elif count is None or len(kept) < count:
            kept.append((entry, ids))
    return kept, too_long


def reward_batch(sequences) -> dict:
    """Token-id lists as the reward model's batch: `input` padded with <|endoftext|>, `length`."""
    width = max(len(s) for s in sequences)
    inputs = np.full((len(sequences), width), EOT_ID, dtype=np.int64)
    for row, ids in enumerate(sequences):
        inputs[row, :len(ids)] = ids
    return {"input": inputs, "length": np.array([len(s) for s in sequences], dtype=np.int64)}


def win_rate(tuned, baseline, identical=None) -> dict:
    """Wins, ties, losses of `tuned` rewards over `baseline` rewards (same prompts) and the
    win rate with ties counted half. `identical`: per prompt, whether the two responses are the
    same tokens; those are ties whatever their rewards (`identical_responses` counts them)."""
    tuned, baseline = np.asarray(tuned, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if tuned.shape != baseline.shape or tuned.size == 0:
        raise ValueError(f"need rewards of the same non-empty prompts, got {tuned.size} and "
                         f"{baseline.size}")
    same = np.zeros(tuned.shape, dtype=bool) if identical is None else \
        np.asarray(identical, dtype=bool)
    if same.shape != tuned.shape:
        raise ValueError(f"need one identical flag per prompt, got {same.size} for {tuned.size}")
    wins = int(((tuned > baseline) & ~same).sum())
    ties = int(((tuned == baseline) | same).sum())
    out = {"wins": wins, "ties": ties, "losses": int(tuned.size) - wins - ties,
           "win_rate": (wins + 0.5 * ties) / tuned.size}
    if identical is not None:
        out["identical_responses"] = int(same.sum())
    return out


def judge(prompts, policies: dict, score, settings, seed, batch_size=8) -> dict:
    """Sample each policy's response to each prompt and score it.

    prompts: [(entry, prompt ids)]; policies: {name: sample(prompt ids, settings, seed) -> token
    ids}, the first the baseline; score(batch) -> (B,) rewards. Returns {"responses": one record
    per prompt (its policies' tokens and rewards), "policies": {name: mean reward, mean length},
    "win_rates": {name: win_rate over the baseline} for every other policy}."""
    names = list(policies)
    records = []
    for index, (entry, prompt_ids) in enumerate(prompts):
        record = {"id": entry["id"], "instruction": entry["instruction"], "input": entry["input"],
                  "chosen": entry["chosen"], "tokens": {}}
        for name in names:
            record["tokens"][name] = [int(t) for t in policies[name](prompt_ids, settings,
                                                                     seed + index)]
        records.append(record)
    for name in names:
        rewards = []
        for start in range(0, len(records), batch_size):
            chunk = range(start, min(start + batch_size, len(records)))
            rewards += [float(r) for r in score(reward_batch(
                [prompts[i][1] + records[i]["tokens"][name] + [EOT_ID] for i in chunk]))]
        for record, reward in zip(records, rewards):
            record.setdefault("rewards", {})[name] = reward
    summary = {name: {"mean_reward": float(np.mean([r["rewards"][name] for r in records])),
                      "mean_tokens": float(np.mean([len(r["tokens"][name]) for r in records]))}
               for name in names}
    baseline = [r["rewards"][names[0]] for r in records]
    rates = {name: win_rate([r["rewards"][name] for r in records], baseline,
                            [r["tokens"][name] == r["tokens"][names[0]] for r in records])
             for name in names[1:]}
    return {"responses": records, "policies": summary, "win_rates": rates}
