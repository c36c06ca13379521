#!/usr/bin/env python
"""Training and beam-search throughput of both backends, side by side, in one run.

Training: each backend's real training step (LoRA r=4, seq_len 512, batch 8, for the gpt2.sm and
gpt2.md shapes) in the variants of backends/benchmark.py, with model FLOPs and MFU as
shared/benchmark.py counts them. Beam search: the E2E-offline test split (630 MRs), beam 10,
eval_len 64, no_repeat_ngram 4, randomly initialised weights. With --profile, two extra steps
of each variant run under the framework's profiler and the report lists where the device time
goes. Each measurement runs in its own process. Prints a table and writes logs/benchmark.md
(and .json) with device and versions.
"""
import argparse
import json
import os
import subprocess
import sys

from backends.benchmark import VARIANTS, bench_beam, bench_training
from shared.benchmark import benchmark_environment, peak_tflops, save
from shared.stop_signals import run_stoppable


RESULT_PREFIX = "BENCHMARK-RESULT "


def measure_in_child(kind, name, card, argv):
    """One measurement in a fresh process: no memory held by the other framework's caches, and
    no interference between them (torch's eager steps ran slower with Jittor loaded)."""
    command = [sys.executable, os.path.abspath(__file__), *argv, "--_measure", kind, name, card]
    proc = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-4000:])
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-600:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default=",".join(VARIANTS),
                   help="training variants to measure: " + ", ".join(VARIANTS) + " (beam search "
                        "runs for the plain torch and jittor among them)")
    p.add_argument("--profile", action="store_true", help="add a per-kernel time breakdown")
    p.add_argument("--cards", default="gpt2.sm,gpt2.md")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--test_data", default=None, help="encoded test jsonl for the beam benchmark")
    p.add_argument("--beam_cards", default="gpt2.md")
    p.add_argument("--beam_batch_size", type=int, default=105)
    p.add_argument("--peak_tflops", type=float, default=None)
    p.add_argument("--out", default="logs/benchmark.md")
    p.add_argument("--_measure", nargs=3, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args._measure:  # child process: one measurement, printed as a JSON line
        kind, name, card = args._measure
        result = bench_training(name, card, args) if kind == "train" else bench_beam(name, card, args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    env = benchmark_environment(args.device, args.precision)
    peak = peak_tflops(env["gpu"], args.peak_tflops)
    results = {"environment": env, "peak_tflops": peak, "training": {}, "beam": {}, "failed": {}}
    variants = [v for v in args.backends.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    for card in filter(None, args.cards.split(",")):
        for variant in variants:
            try:
                r = measure_in_child("train", variant, card, argv)
            except Exception as exc:  # one failing variant must not lose the others' numbers
                results["failed"][f"{card} {variant}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"train {card} {variant} FAILED: {exc}", flush=True)
                continue
            r["mfu"] = r["model_tflops"] / peak if peak else None
            results["training"].setdefault(card, {})[variant] = r
            save(results, env, args)  # partial results survive an interrupted run
            print(f"train {card:8s} {variant:14s} {r['tokens_per_s']:10,.0f} tok/s  "
                  f"{r['step_ms']:7.1f} ms/step  {r['model_tflops']:6.1f} TFLOP/s", flush=True)
    if args.test_data:
        for card in filter(None, args.beam_cards.split(",")):
            for backend in [b for b in ("torch", "jittor") if b in variants]:
                try:
                    r = measure_in_child("beam", backend, card, argv)
                except Exception as exc:
                    results["failed"][f"beam {card} {backend}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                    print(f"beam {card} {backend} FAILED: {exc}", flush=True)
                    continue
                results["beam"].setdefault(card, {})[backend] = r
                save(results, env, args)
                print(f"beam  {card:8s} {backend:6s} {r['queries']} MRs in {r['seconds']:.1f}s "
                      f"({r['queries_per_s']:.1f} MRs/s)", flush=True)
    print(save(results, env, args))
    return 0


if __name__ == "__main__":
    sys.exit(run_stoppable(main))
