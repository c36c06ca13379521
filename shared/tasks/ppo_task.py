"""RLHF's PPO step with the shared trainer (`scripts/ppo_ft.py`): its flags, the rollouts, and
the held-out comparison of the tuned policy with the starting (SFT) model.

The trainer's epoch k is PPO iteration k. It starts with one rollout: `--rollout_batch` prompts
of the train split (drawn by numpy's generator seeded by (--random_seed, k)) answered by the
policy through the shared sampler (shared/decode/sampling.py; row r's draws seeded by
(--random_seed, k, r), so both backends sample the same tokens from the same weights), each
response ending at <|endoftext|> (kept as its last token) or after `--response_len` tokens.
The backend returns the log-probabilities of the policy and the frozen reference, the values,
and the reward model's scores; then, on the host and once for both backends
(shared/train/ppo_math.py): the per-token KL penalty with the KL controller's coefficient, GAE,
whitened advantages, and the controller's update. The iteration's steps are `--ppo_epochs`
passes over the rollout in minibatches of `--train_batch_size` rows (order seeded by
(--random_seed, k, pass)); each step's loss is the clipped policy loss + `--vf_coef` x the
clipped value loss (+ `--ptx_coef` x the language-model loss of chosen responses of the train
split, the SFT data). The log's train records carry, beside the loss, the rollout's `reward`
(mean score), `kl` (mean summed KL per response), `kl_coef` (the coefficient its rewards
used), `response_length`, and the step's `policy_loss`, `value_loss`, `returns`, `entropy`,
`clip_fraction`, `value_clip_fraction`, `approx_kl` (and `ptx_loss`).

The policy trains its LoRA matrices and the value head, or with `--lora_dim 0` every weight
(the reference stays a frozen copy of the starting model either way).
Resuming is exact: the rollout being trained on, the KL coefficient and the value head travel
in the trainer state (beside the optimizer's arrays, prefixes `rollout/` and `value_head/`),
every draw is seeded by the iteration, and the checkpoints hold the policy's trained weights
(LoRA's, or all). The final checkpoint is the plain policy (GPT-2 (+ LoRA)), which generate.py
and chat.py load. After training,
WORK_DIR/ppo_eval.json holds the reward model's mean score of the tuned policy's and the
starting model's responses to held-out prompts (the same seeds for both), the policy's wins,
ties (identical responses always tie) and losses, its win rate (ties count half), and example
responses.
"""
from __future__ import annotations

import os

import numpy as np

from shared.decode.sampling import SamplingSettings
from shared.model.checkpoint import load_for_model, normalize_state_dict, read_checkpoint
from shared.model.classifier_params import split_head
from shared.model.checkpoint_files import CheckpointError
from shared.runtime.arg_types import (int_at_least, non_negative_float, non_negative_int,
                                      positive_float, positive_int, probability, temperature,
                                      top_p_mass)
from shared.runtime.atomic import write_json
from shared.runtime.run_lock import RunLock
from shared.tasks.classify_task import card_config
from shared.tasks.preference_task import (DATA_RESUME_KEYS, REWARD_CARD,
                                          add_preference_data_flags, preference_datasets,
                                          preference_problems, read_reward_card)
from shared.tasks.reward_judge import win_rate
from shared.text.tokenizer import EOT_ID, load_tokenizer
from shared.train.ppo_math import KLController, gae, penalized_rewards, whiten
from shared.train.train_args import build_parser, model_config
from shared.train.trainer import Trainer, TrainingError

PPO_RESUME_KEYS = ("reward_model", "rollout_batch", "response_len", "temperature", "top_k",
                   "top_p", "ppo_epochs", "kl_coef", "target_kl", "kl_horizon", "gamma", "lam",
                   "clip_range", "value_clip", "vf_coef", "ptx_coef")
ROLLOUT_PREFIX = "rollout/"  # the rollout's arrays in the trainer state
VALUE_HEAD_PREFIX = "value_head/"  # the value head's weights in the trainer state
SEQUENCE_KEYS = ("input", "target", "mask", "old_logprobs", "old_values", "advantages", "returns")
STATS = ("iteration", "reward", "kl", "kl_coef", "response_length")  # rollout_state["stats"]
EVAL_SEED_TAG = 0  # held-out draws: (seed, 0, row); training iterations count from 1


def build_ppo_parser():
    """gpt2_ft.py's flags (no --train_data/--valid_data), the preference data's, and PPO's."""
    p = build_parser(data_args=False, description="Tune GPT-2 (+ LoRA, or every weight with "
                     "--lora_dim 0) with PPO against a reward model (RLHF), with the PyTorch or "
                     "Jittor backend")
    add_preference_data_flags(p)
    t = p.add_argument_group("PPO settings")
    t.add_argument("--reward_model", required=True, metavar="DIR",
                   help="a finished reward_ft.py run's --work_dir (its reward_model.json names "
                        "the checkpoint and the model's shape)")
    t.add_argument("--rollout_batch", type=int_at_least(2), default=16,
                   help="prompts answered per PPO iteration (a multiple of --train_batch_size, "
                        "the minibatch)")
    t.add_argument("--response_len", type=positive_int, default=32,
                   help="most tokens of a sampled response (<|endoftext|> ends it earlier)")
    t.add_argument("--temperature", type=temperature, default=1.0, help="sampling temperature")
    t.add_argument("--top_k", type=non_negative_int, default=0, help="top-k filtering (0: off)")
    t.add_argument("--top_p", type=top_p_mass, default=1.0, help="nucleus mass (1: off)")
    t.add_argument("--ppo_epochs", type=positive_int, default=4,
                   help="passes over each rollout")
    t.add_argument("--kl_coef", type=non_negative_float, default=0.2,
                   help="the KL penalty's (initial) coefficient")
    t.add_argument("--target_kl", type=positive_float, default=None,
                   help="adapt the coefficient towards this KL per response (default: fixed)")
    t.add_argument("--kl_horizon", type=positive_float, default=10000.0,
                   help="the adaptive controller's horizon")
    t.add_argument("--gamma", type=probability, default=1.0, help="GAE's discount")
    t.add_argument("--lam", type=probability, default=0.95, help="GAE's lambda")
    t.add_argument("--clip_range", type=positive_float, default=0.2,
                   help="the policy ratio's clip: 1 +- this")
    t.add_argument("--value_clip", type=positive_float, default=0.2,
                   help="the values' clip around the rollout's")
    t.add_argument("--vf_coef", type=non_negative_float, default=0.1,
                   help="weight of the value loss")
    t.add_argument("--ptx_coef", type=non_negative_float, default=0.0,
                   help="weight of the language-model loss on chosen responses of the train "
                        "split (0: none)")
    t.add_argument("--eval_prompts", type=positive_int, default=32,
                   help="held-out prompts answered by the policy and the starting model for "
                        "ppo_eval.json")
    p.set_defaults(seq_len=256, train_batch_size=4, valid_batch_size=8, eval_interval=100000,
                   save_interval=100000, lora_dim=None)
    return p


def ppo_problems(args) -> list:
    """PPO's argument problems besides the trainer's (which validate() finds)."""
    problems = preference_problems(args, "ppo")
    if getattr(args, "peft", None) not in (None, "lora", "full"):
        problems.append(f"--peft {args.peft}: PPO trains LoRA (--lora_dim > 0) or every "
                        f"weight (--lora_dim 0) only")
    if args.rollout_batch % args.train_batch_size:
        problems.append(f"--rollout_batch {args.rollout_batch} is not a multiple of "
                        f"--train_batch_size {args.train_batch_size} (the PPO minibatch)")
    if args.grad_acc != 1:
        problems.append("--grad_acc: each PPO minibatch is one update; give --train_batch_size")
    if args.response_len >= args.seq_len:
        problems.append(f"--response_len {args.response_len} leaves no room for a prompt in "
                        f"--seq_len {args.seq_len}")
    if not os.path.isfile(os.path.join(args.reward_model, REWARD_CARD)):
        problems.append(f"--reward_model {args.reward_model}: no {REWARD_CARD} there (give the "
                        f"--work_dir of a finished reward_ft.py run)")
    return problems


def reward_model(model_dir, policy_config) -> tuple:
    """(GPT2Config, checkpoint path) of the reward model a reward_ft.py run left in `model_dir`
    (its card), the checkpoint checked against them (shapes, one output) and against the
    policy's tokenizer size."""
    card = read_reward_card(model_dir)
    path = card["checkpoint"]
    config = card_config(card)
    try:
        body, _ = split_head(read_checkpoint(path), config, 1, path)
        wte = normalize_state_dict(body, path).get("transformer.wte.weight")
        if wte is not None and wte.shape[0] != policy_config.vocab_size:
            raise CheckpointError(f"a reward model for a tokenizer of {wte.shape[0]} tokens; the "
                                  f"policy's has {policy_config.vocab_size}")
        load_for_model(body, config, False, path)
    except ValueError as exc:
        raise CheckpointError(f"--reward_model {model_dir}: {path}: {exc}") from exc
    if config.vocab_size != policy_config.vocab_size:
        raise CheckpointError(f"--reward_model {model_dir}: a reward model for a tokenizer of "
                              f"{config.vocab_size} tokens; the policy's has "
                              f"{policy_config.vocab_size}")
    return config, path


def trainer_backend(backend_cls, reward):
    """`backend_cls` (a twin's PPOBackend) with the reward model (`reward`: its config and
    checkpoint), and the rollout and the value head in its trainer state, so that a resumed run
    trains on the same rollout with the same coefficient and values. (The head rides there, not
    in model.N.pt, which stays the plain policy: LoRA weights, or with --lora_dim 0 the whole
    model, and the final checkpoint is a policy whether the run trained LoRA or all weights.)"""

    class PPOTrainerBackend(backend_cls):
        def __init__(self, config, args):
            self.reward_config, self.reward_checkpoint = reward
            self.rollout_state = {}
            super().__init__(config, args)

        def optimizer_state(self):
            state = dict(super().optimizer_state())
            state.update({ROLLOUT_PREFIX + k: v for k, v in self.rollout_state.items()})
            state.update({VALUE_HEAD_PREFIX + k: v for k, v in self.value_head_numpy().items()})
            return state

        def load_optimizer_state(self, arrays):
            mine = (ROLLOUT_PREFIX, VALUE_HEAD_PREFIX)
            super().load_optimizer_state({k: v for k, v in arrays.items()
                                          if not k.startswith(mine)})
            self.rollout_state = {k[len(ROLLOUT_PREFIX):]: np.array(v) for k, v in arrays.items()
                                  if k.startswith(ROLLOUT_PREFIX)}
            self.load_value_head({k[len(VALUE_HEAD_PREFIX):]: v for k, v in arrays.items()
                                  if k.startswith(VALUE_HEAD_PREFIX)}, "the trainer state")

    return PPOTrainerBackend


def fitting_prompts(dataset, response_len, seq_len) -> tuple:
    """(prompt ids of `dataset`'s pairs that leave room for a response and the <|endoftext|>
    the reward model reads, how many do not)."""
    prompts = [full[:start] for start, full, _ in dataset.pairs]
    kept = [p for p in prompts if len(p) + response_len + 1 <= seq_len]
    return kept, len(prompts) - len(kept)


def row_seed(*parts) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def with_eos(tokens, response_len) -> list:
    """A sampled response as the policy wrote it: <|endoftext|> kept when it was drawn."""
    return list(tokens) + [EOT_ID] if len(tokens) < response_len else list(tokens)


def sequences(prompts, responses, width=None) -> dict:
    """Prompt + response rows padded with <|endoftext|>: input, target, length, mask (1 at the
    positions whose next token is a response token), and each row's first such position."""
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    width = width or max(len(r) for r in rows)
    inputs = np.full((len(rows), width), EOT_ID, dtype=np.int64)
    target = np.full((len(rows), width), EOT_ID, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.float32)
    for i, (row, prompt) in enumerate(zip(rows, prompts)):
        inputs[i, :len(row)] = row
        target[i, :len(row) - 1] = row[1:]
        mask[i, len(prompt) - 1:len(row) - 1] = 1.0
    return {"input": inputs, "target": target, "mask": mask,
            "length": np.array([len(r) for r in rows], dtype=np.int64),
            "start": np.array([len(p) - 1 for p in prompts], dtype=np.int64)}


def to_columns(a, start, lengths, width) -> np.ndarray:
    """Sequence positions -> left-aligned response columns (B, width), float64."""
    out = np.zeros((len(start), width))
    for r, (s, n) in enumerate(zip(start, lengths)):
        out[r, :n] = a[r, s:s + n]
    return out


def to_positions(a, start, lengths, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    for r, (s, n) in enumerate(zip(start, lengths)):
        out[r, s:s + n] = a[r, :n]
    return out


class PPORollouts:
    """The trainer's training set for PPO (module docstring): FTDataset's batch interface, an
    epoch being one iteration; `backend` is set once the trainer has built it."""

    def __init__(self, args, train_pairs):
        self.args, self.pairs, self.backend = args, train_pairs, None
        self.name = self.source = f"prompts of the train split of {args.data}"
        self.prompts, self.too_long = fitting_prompts(train_pairs, args.response_len, args.seq_len)
        if not self.prompts:
            raise TrainingError(f"{self.source}: no prompt leaves --response_len "
                                f"{args.response_len} + 1 tokens within --seq_len {args.seq_len}")
        self.per_pass = args.rollout_batch // args.train_batch_size
        self.num_batches = args.ppo_epochs * self.per_pass
        self.num_examples = args.rollout_batch
        self.settings = SamplingSettings(args.temperature, args.top_k, args.top_p,
                                         args.response_len)
        self.kl = KLController(args.kl_coef, args.target_kl, args.kl_horizon)

    def truncation_report(self) -> str:
        if not self.too_long:
            return ""
        return (f"{self.source}: {self.too_long} of {len(self.prompts) + self.too_long} prompts "
                f"left out: prompt + --response_len {self.args.response_len} + 1 exceeds "
                f"--seq_len {self.args.seq_len}")

    def completion_report(self) -> str:
        return ""

    def keeps_no_completion(self) -> bool:
        return False

    def respond(self, prompts, seeds, reference=False) -> list:
        return [with_eos(self.backend.sample(p, self.settings, s, 1, reference=reference)[0],
                         self.args.response_len) for p, s in zip(prompts, seeds)]

    def width(self) -> "int | None":
        """The rows' width: --seq_len with --fixed_width (one shape for Jittor), else the
        longest row's."""
        return self.args.seq_len if self.args.fixed_width else None

    def score(self, prompts, responses) -> np.ndarray:
        """The reward model's scores of prompt + response + <|endoftext|> (the layout it was
        trained on: a response cut by --response_len gets the end token appended)."""
        ended = [r if r and r[-1] == EOT_ID else list(r) + [EOT_ID] for r in responses]
        batch = sequences(prompts, ended, self.width())
        return np.asarray(self.backend.score({k: batch[k] for k in ("input", "length")}),
                          dtype=np.float64)

    def rollout(self, iteration, seed) -> dict:
        """Iteration `iteration`'s rollout: sampled responses, their scores, log-probabilities,
        values, advantages and returns (arrays over sequence positions), its statistics."""
        args = self.args
        rng = np.random.default_rng([seed, iteration])
        picks = rng.choice(len(self.prompts), args.rollout_batch,
                           replace=len(self.prompts) < args.rollout_batch)
        prompts = [self.prompts[i] for i in picks]
        responses = self.respond(prompts, [row_seed(seed, iteration, r) for r in range(len(picks))])
        batch = sequences(prompts, responses, self.width())
        logprobs, ref_logprobs, values = self.backend.rollout_values(
            {k: batch[k] for k in ("input", "target")})
        scores = self.score(prompts, responses)
        start, lengths = batch["start"], np.array([len(r) for r in responses])
        width = int(lengths.max())
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.float64)
        if self.backend.rollout_state:  # the coefficient as the last rollout left it
            self.kl.load_state({"value": float(self.backend.rollout_state["kl_coef"][0])})
        coef = self.kl.value
        rewards, kl = penalized_rewards(scores, to_columns(logprobs, start, lengths, width),
                                        to_columns(ref_logprobs, start, lengths, width), mask, coef)
        advantages, returns = gae(rewards, to_columns(values, start, lengths, width), mask,
                                  args.gamma, args.lam)
        advantages = whiten(advantages, mask)
        kl_per_response = float(kl.sum(axis=1).mean())
        self.kl.update(kl_per_response, args.rollout_batch)
        shape = batch["input"].shape
        return {"input": batch["input"], "target": batch["target"], "mask": batch["mask"],
                "old_logprobs": logprobs.astype(np.float32), "old_values": values.astype(np.float32),
                "advantages": to_positions(advantages, start, lengths, shape),
                "returns": to_positions(returns, start, lengths, shape),
                "scores": scores,
                "stats": np.array([iteration, scores.mean(), kl_per_response, coef,
                                   lengths.mean()], dtype=np.float64),
                "kl_coef": np.array([self.kl.value], dtype=np.float64)}

    def minibatch(self, state, rows, iteration, index) -> dict:
        out = {k: state[k][rows] for k in SEQUENCE_KEYS}
        for name, value in zip(STATS[1:], state["stats"][1:]):
            out["rollout_" + name] = np.array([value], dtype=np.float32)
        if self.args.ptx_coef > 0:  # chosen responses of the train split (the SFT data)
            rng = np.random.default_rng([self.args.random_seed, iteration, index, 1])
            picks = rng.choice(self.pairs.num_examples, len(rows),
                               replace=self.pairs.num_examples < len(rows)).tolist()
            sft = self.pairs.collate(picks)
            out.update({f"ptx_{k}": sft[k][:len(rows)] for k in ("input", "target", "mask")})
        return out

    def train_batches(self, epoch, seed, start_batch=0):
        state = self.backend.rollout_state
        if not (state and int(state["stats"][0]) == epoch):
            if start_batch:
                raise TrainingError(f"--resume: the trainer state holds no rollout of iteration "
                                    f"{epoch} to continue at its step {start_batch + 1}")
            state = self.backend.rollout_state = self.rollout(epoch, seed)
        size = self.args.train_batch_size
        for b in range(start_batch, self.num_batches):
            ppo_pass, k = divmod(b, self.per_pass)
            order = np.random.default_rng([seed, epoch, ppo_pass + 1]).permutation(
                self.args.rollout_batch)
            yield self.minibatch(state, order[k * size:(k + 1) * size], epoch, b)

    def eval_batches(self):
        return iter(())

    def compare_with_start(self, prompts, tokenizer, examples=3) -> dict:
        """The policy's and the starting model's responses to `prompts` (the same draws),
        scored by the reward model: mean scores, the policy's win rate (identical responses
        tie), examples."""
        seed = self.args.random_seed
        seeds = [row_seed(seed, EVAL_SEED_TAG, r) for r in range(len(prompts))]
        out, scores = {}, {}
        for who, reference in (("policy", False), ("start", True)):
            responses = self.respond(prompts, seeds, reference=reference)
            scores[who] = self.score(prompts, responses)
            out[who] = responses
        rate = win_rate(scores["policy"], scores["start"],
                        [a == b for a, b in zip(out["policy"], out["start"])])
        def text(ids):
            return tokenizer.decode([t for t in ids if t != EOT_ID])
        return {"prompts": len(prompts), "reward_policy": float(scores["policy"].mean()),
                "reward_start": float(scores["start"].mean()), **rate,
                "response_length_policy": float(np.mean([len(r) for r in out["policy"]])),
                "response_length_start": float(np.mean([len(r) for r in out["start"]])),
                "examples": [{"prompt": text(prompts[i]), "policy": text(out["policy"][i]),
                              "start": text(out["start"][i]),
                              "reward_policy": float(scores["policy"][i]),
                              "reward_start": float(scores["start"][i])}
                             for i in range(min(examples, len(prompts)))]}


def train_ppo(args, backend_for, on_step=None):
    """Split and encode --data, check the reward model, train with PPO
    (`backend_for(args.backend)`: a twin's PPOBackend), then compare the policy with the
    starting model on held-out prompts into WORK_DIR/ppo_eval.json; the run folder is locked
    meanwhile. `on_step`: the trainer's per-step hook (tests)."""
    tokenizer = load_tokenizer(args.vocab)
    data = preference_datasets(args, tokenizer)  # bad data is refused before anything is written
    reward = reward_model(args.reward_model, model_config(args))
    rollouts = PPORollouts(args, data["train"])
    if rollouts.truncation_report():
        print(f"warning: {rollouts.truncation_report()}", flush=True)
    test_prompts, test_too_long = fitting_prompts(data["test"], args.response_len, args.seq_len)
    if not test_prompts:  # refused now, not after training: the held-out comparison needs one
        raise TrainingError(f"prompts of the test split of {args.data}: none leaves "
                            f"--response_len {args.response_len} + 1 tokens within --seq_len "
                            f"{args.seq_len} (the held-out comparison of ppo_eval.json)")
    if test_too_long:
        print(f"warning: prompts of the test split of {args.data}: {test_too_long} of "
              f"{len(test_prompts) + test_too_long} left out of the held-out comparison: "
              f"prompt + --response_len {args.response_len} + 1 exceeds --seq_len "
              f"{args.seq_len}", flush=True)
    with RunLock(args.work_dir):
        trainer = Trainer(args, trainer_backend(backend_for(args.backend), reward),
                          on_step=on_step, datasets=(rollouts, data["valid"]),
                          resume_keys=DATA_RESUME_KEYS + PPO_RESUME_KEYS)
        rollouts.backend = trainer.backend
        summary = trainer.train()
        held_out = rollouts.compare_with_start(test_prompts[:args.eval_prompts], tokenizer)
        held_out["prompts_too_long"] = test_too_long
        result = {"backend": args.backend, "checkpoint": summary["final_checkpoint"],
                  "steps": summary["steps"], "iterations": summary["epochs"],
                  "kl_coef": float(trainer.backend.rollout_state["kl_coef"][0]), "test": held_out,
                  "valid": {k[len("valid_"):]: v for k, v in trainer.last_valid.items()
                            if k.startswith("valid_") and k != "valid_ppl"},
                  "data": {name: d.counts() for name, d in data.items()}}
        write_json(os.path.join(args.work_dir, "ppo_eval.json"), result)
    print(f"test: {held_out['prompts']} prompts, reward {held_out['reward_policy']:.4f} (start "
          f"{held_out['reward_start']:.4f}), win rate {held_out['win_rate']:.3f} -> "
          f"{os.path.join(args.work_dir, 'ppo_eval.json')}", flush=True)
    return result
