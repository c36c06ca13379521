#!/usr/bin/env python
"""Training and beam-search throughput of both backends and their peers, side by side, in one run.

Training: each backend's real training step (LoRA r=4, seq_len 512, batch 8) in the variants of
backends/benchmark_steps.py (torch eager, torch+compile, jittor, jittor+tuner; torch+autotune when named) and the peers of
backends/benchmark_peers.py (Hugging Face transformers + peft; microsoft/LoRA's own code with
--reference_src), with model FLOPs and MFU as shared/pipeline/benchmark_plan.py counts them, peak device memory
through NVML and torch's peak tensors, and ratios to torch eager and the best peer.
--extra_cards measures other model sizes with --extra_backends; --peft_methods adds a row per
fine-tuning method and backend ("torch peft=prefix"; FLOPs of full and top2 count their weight
gradients); --preference_tasks adds a row per preference-tuning step and backend ("torch task=dpo":
the reward model, DPO, PPO's update with its rollout's scoring forwards beside it, tokens/s,
steps/s and peak memory). Beam search: the E2E-offline
test split (630 MRs), beam 10, eval_len 64, no_repeat_ngram 4, randomly initialised weights.
With --profile, two extra steps of each project variant (and one beam batch) run under the
framework's profiler and the report lists where the device time goes. Each measurement runs in
its own process (backends/benchmark_run.py). Prints a table and writes logs/benchmark.md (and
.json) with device and versions.
"""
import argparse
import sys

from backends.benchmark_steps import measure
from backends.benchmark_run import print_result, run_benchmark
from shared.runtime.arg_types import non_negative_int, positive_float, positive_int
from shared.pipeline.benchmark_plan import (KNOWN_VARIANTS, OPT_IN_VARIANTS, PREFERENCE_TASKS,
                                            VARIANTS)
from shared.model.config import MODEL_CARDS, shape_flag_problems
from shared.model.peft_methods import METHODS
from shared.decode.decode_cache import CACHES
from shared.runtime.environment import device_problems
from shared.runtime.preflight import input_file_problems, output_file_problems
from shared.runtime.entry_point import run_stoppable


def unknown_names(flag, value, known):
    """The problem with the comma-separated names of `value` not in `known` (none if all are)."""
    unknown = sorted(set(value.split(",")) - set(known) - {""})
    return [f"{flag}: unknown {unknown}; choose from {', '.join(known)}"] if unknown else []


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(VARIANTS),
                   help="training variants to measure: " + ", ".join(VARIANTS) + " (beam search "
                        "runs for the plain torch and jittor among them); also, only when named: "
                        + ", ".join(OPT_IN_VARIANTS) + " (torch.compile's max-autotune)")
    p.add_argument("--profile", action="store_true", help="add a per-kernel time breakdown")
    p.add_argument("--cards", default="gpt2.md")
    p.add_argument("--extra_cards", default="gpt2.sm,gpt2.lg",
                   help="more model sizes, measured with --extra_backends only")
    p.add_argument("--extra_backends", default="torch,jittor")
    p.add_argument("--peft_methods", default="",
                   help="also one row per --peft method and backend (\"torch peft=prefix\"), "
                        "each method at its flags' default sizes, on the --cards models")
    p.add_argument("--preference_tasks", default="",
                   help="also one row per preference-tuning task and backend (\"torch task=dpo\"): "
                        + ", ".join(PREFERENCE_TASKS) + "; LoRA r=4, --batch_size sequences "
                        "(reward and dpo: half chosen, half rejected), on the --cards models")
    p.add_argument("--reference_src", default=None,
                   help="a checkout of github.com/microsoft/LoRA: adds its examples/NLG model as a peer")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seq_len", type=positive_int, default=512)
    p.add_argument("--batch_size", type=positive_int, default=8)
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--warmup", type=non_negative_int, default=5)
    p.add_argument("--test_data", default=None, help="encoded test jsonl for the beam benchmark")
    p.add_argument("--beam_cards", default="gpt2.md")
    p.add_argument("--beam_batch_size", type=positive_int, default=105)
    p.add_argument("--beam_caches", default=",".join(CACHES),
                   help="beam search caches to time, each in its own process: " + ", ".join(CACHES)
                        + " (per_row: the exact path)")
    p.add_argument("--peak_tflops", type=positive_float, default=None)
    p.add_argument("--device_mem_cap_gib", type=positive_float, default=None,
                   help="cap each measurement's device memory (CUDA context included) at this many "
                        "GiB: torch through its allocator's per-process fraction, Jittor by taking "
                        "the rest of the card first (backends/benchmark_steps.py DeviceMemoryCap)")
    p.add_argument("--n_embd", type=int, default=None, help="override every card's n_embd (quick runs)")
    p.add_argument("--n_layer", type=int, default=None, help="override every card's n_layer")
    p.add_argument("--n_head", type=int, default=None, help="override every card's n_head")
    p.add_argument("--out", default="logs/benchmark.md")
    p.add_argument("--resume", action="store_true",
                   help="keep the measurements already in --out's .json (same settings and GPU); "
                        "measure only what is missing or failed there")
    p.add_argument("--_measure", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lists = (("--backends", args.backends, KNOWN_VARIANTS),
             ("--extra_backends", args.extra_backends, KNOWN_VARIANTS),
             ("--cards", args.cards, MODEL_CARDS), ("--extra_cards", args.extra_cards, MODEL_CARDS),
             ("--beam_cards", args.beam_cards, MODEL_CARDS), ("--beam_caches", args.beam_caches, CACHES),
             ("--peft_methods", args.peft_methods, METHODS),
             ("--preference_tasks", args.preference_tasks, PREFERENCE_TASKS))
    problems = [problem for flag, value, known in lists for problem in unknown_names(flag, value, known)]
    problems += [f"--{name} must be at least 1, got {getattr(args, name)}"
                 for name in ("seq_len", "batch_size", "steps", "beam_batch_size")
                 if getattr(args, name) < 1]
    cards = {card for _, value, known in lists if known is MODEL_CARDS
             for card in value.split(",") if card in MODEL_CARDS}
    problems += sorted({problem for card in cards
                        for problem in shape_flag_problems(args.n_embd, args.n_layer, args.n_head, card)})
    pairwise = sorted(set(args.preference_tasks.split(",")) & {"reward", "dpo"})
    if pairwise and args.batch_size % 2:
        problems.append(f"--batch_size {args.batch_size} with --preference_tasks "
                        f"{','.join(pairwise)}: must be even (chosen and rejected rows)")
    if args.device_mem_cap_gib is not None and args.device != "cuda":
        problems.append("--device_mem_cap_gib needs --device cuda")
    problems += device_problems(args.device)
    problems += input_file_problems("--test_data", args.test_data) if args.test_data else []
    problems += output_file_problems("--out", args.out)
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args._measure:  # child process: one measurement, printed as a JSON line
        print_result(measure(*args._measure, args))
        return 0
    try:
        print(run_benchmark(__file__, argv, args))
    except ValueError as exc:  # --resume over a record of other settings: nothing was measured
        print(f"benchmark.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
