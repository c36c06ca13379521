#!/usr/bin/env python
"""Judge policies by a reward model: each answers the held-out prompts of a preference file with
the shared sampler, the reward model scores the answers, the first policy is the baseline, e.g.
  python scripts/reward_judge.py --backend torch \
      --data ../shared/data/instruct/instruction-data-with-preference.json \
      --policies sft=trained/sft/sft.safetensors dpo=trained/dpo/policy.safetensors \
      --reward_model trained/reward --max_new_tokens 48 --out trained/judge/judge.json
Writes OUT (win rates of every other policy over the baseline, ties counted half, mean rewards
and response lengths) and OUT's folder/responses.jsonl (every prompt's responses and rewards).
Policies are whole GPT-2 checkpoints (LoRA merged, or with the LoRA settings they store); the
reward model is a reward_ft.py work folder (its reward_model.json). The prompts are the test split
of --data as reward_ft.py and dpo_ft.py draw it (--split_seed, --limit, equal pairs left out).
"""
import argparse
import json
import os
import sys

from backends import load_classifier, load_inference_model
from shared.decode.sampling import EOT_ID, SamplingSettings
from shared.runtime.arg_types import (non_negative_int, positive_int, seed_int, temperature,
                                      top_p_mass)
from shared.runtime.atomic import atomic_open, write_json
from shared.runtime.config_parser import ConfigArgumentParser
from shared.runtime.entry_point import run_script
from shared.runtime.environment import default_device
from shared.runtime.paths import file_check, resolve_data_path
from shared.model.config import GPT2Config
from shared.tasks.ppo_task import reward_model
from shared.tasks.preference_task import PREFERENCE_ENV, read_reward_card
from shared.tasks.reward_judge import held_out_prompts, judge
from shared.text.tokenizer import load_tokenizer
from shared.train.train_args import BACKENDS, add_model_shape_args


def policy_pair(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT, got {text!r}")
    return name, path


def build_parser():
    p = ConfigArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda when available, else cpu")
    add_model_shape_args(p)
    p.add_argument("--policies", nargs="+", type=policy_pair, required=True,
                   help="NAME=CHECKPOINT ...: the first is the baseline (at least two)")
    p.add_argument("--reward_model", required=True, help="reward_ft.py's --work_dir")
    p.add_argument("--data", default=None, help=f"preference JSON (default: ${PREFERENCE_ENV})")
    p.add_argument("--split_seed", type=seed_int, default=123)
    p.add_argument("--limit", type=positive_int, default=None,
                   help="the first N entries of --data, as given to reward_ft.py / dpo_ft.py")
    p.add_argument("--prompts", type=positive_int, default=None,
                   help="judge the first N test prompts (default: all)")
    p.add_argument("--seq_len", type=positive_int, default=256,
                   help="prompt + response + <|endoftext|> must fit (the reward model's)")
    p.add_argument("--temperature", type=temperature, default=1.0, help="0: greedy")
    p.add_argument("--top_k", type=non_negative_int, default=0, help="0: all tokens")
    p.add_argument("--top_p", type=top_p_mass, default=1.0, help="1: off")
    p.add_argument("--max_new_tokens", type=positive_int, default=48)
    p.add_argument("--seed", type=seed_int, default=10,
                   help="prompt i is sampled with seed + i by every policy")
    p.add_argument("--vocab", default=None, help="GPT-2 vocab folder (default: GPT2_VOCAB_DIR)")
    p.add_argument("--out", required=True, help="the result JSON")
    return p


def problems_of(args) -> list:
    problems = []
    names = [name for name, _ in args.policies]
    if len(names) < 2:
        problems.append("--policies needs a baseline and at least one policy to judge")
    if len(set(names)) != len(names):
        problems.append(f"--policies names repeat: {names}")
    for name, path in args.policies:
        if not os.path.isfile(path):
            problems.append(f"--policies {name}={path}: no such file")
    if not os.path.isfile(os.path.join(args.reward_model, "reward_model.json")):
        problems.append(f"--reward_model {args.reward_model}: no reward_model.json (the "
                        f"--work_dir of a finished reward_ft.py run)")
    if args.max_new_tokens + 2 > args.seq_len:
        problems.append(f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt "
                        f"in --seq_len {args.seq_len}")
    return problems


def sampler(args, path):
    """sample(prompt ids, settings, seed) -> token ids of the policy at `path`."""
    model_args = argparse.Namespace(**vars(args))
    model_args.init_checkpoint, model_args.lora_checkpoint = path, None
    model_args.lora_dim = model_args.lora_alpha = None  # from the checkpoint's LoRA settings
    model_args.lora_layer_dims = model_args.lora_layer_alphas = None
    model_args.peft = None
    loaded = load_inference_model(model_args)
    return lambda ids, settings, seed: loaded.sample(ids, settings, seed, 1)[0]


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.device = args.device or default_device()
    problems = problems_of(args)
    if problems:
        parser.error("bad arguments:\n  " + "\n  ".join(problems))

    def work():
        args.data = resolve_data_path(args.data, PREFERENCE_ENV, flag="--data",
                                      what="preference data (a JSON file)", check=file_check)
        settings = SamplingSettings(temperature=args.temperature, top_k=args.top_k,
                                    top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                    eos_token_id=EOT_ID)
        tokenizer = load_tokenizer(args.vocab)
        prompts, too_long = held_out_prompts(args.data, args.split_seed, args.limit, args.prompts,
                                             tokenizer, args.seq_len - args.max_new_tokens - 1)
        if not prompts:
            raise ValueError(f"{args.data}: no test prompt fits --seq_len {args.seq_len} with "
                             f"--max_new_tokens {args.max_new_tokens}")
        card = read_reward_card(args.reward_model)
        # its checkpoint against its card, and its vocabulary against the policies' (one line)
        reward_model(args.reward_model, GPT2Config.from_model_card(
            args.model_card, n_embd=args.n_embd, n_layer=args.n_layer, n_head=args.n_head))
        predict = load_classifier(args.backend, args.device, card)
        policies = {name: sampler(args, path) for name, path in args.policies}
        result = judge(prompts, policies, lambda batch: predict(batch)[:, 0], settings, args.seed)
        for record in result["responses"]:
            record["responses"] = {name: tokenizer.decode(ids)
                                   for name, ids in record.pop("tokens").items()}
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        with atomic_open(os.path.join(out_dir, "responses.jsonl")) as f:
            for record in result["responses"]:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        summary = {"backend": args.backend, "baseline": args.policies[0][0],
                   "policies": result["policies"], "win_rates": result["win_rates"],
                   "prompts": len(prompts), "prompts_too_long": too_long,
                   "checkpoints": dict(args.policies), "reward_model": card["checkpoint"],
                   "sampling": {"temperature": args.temperature, "top_k": args.top_k,
                                "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
                                "seed": args.seed}}
        write_json(args.out, summary)
        for name, rate in result["win_rates"].items():
            print(f"{name} over {summary['baseline']}: win rate {rate['win_rate']:.4f} "
                  f"({rate['wins']} wins, {rate['ties']} ties, {rate['losses']} losses of "
                  f"{len(prompts)} prompts); mean reward " + ", ".join(
                      f"{n} {p['mean_reward']:.4f}" for n, p in result["policies"].items()))
        return 0
    return run_script(work, parser)


if __name__ == "__main__":
    sys.exit(main())
