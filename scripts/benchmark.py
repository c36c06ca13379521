#!/usr/bin/env python
"""Training and beam-search throughput of both backends, side by side, in one run.

Training: the real training step of each backend (shared/trainer.py's backend objects: forward,
backward, clipping, the reference AdamW) on synthetic full-length batches, LoRA r=4, seq_len
512, batch 8, for the gpt2.sm and gpt2.md shapes. Model FLOPs per token for LoRA training are
counted as 2N (forward) + 2N (input gradients; frozen weights need no weight gradients) + the
attention score/value products (3 x 4 * n_layer * seq_len * n_embd, forward and backward),
N = non-embedding weights + the tied output head (n_embd x vocab). MFU = model FLOP/s / peak.
Beam search: the E2E-offline test split (630 MRs), beam 10, eval_len 64, no_repeat_ngram 4,
with randomly initialised weights (so beams rarely stop early: a worst case).
Prints a table and writes logs/benchmark.md (and .json) with device and versions.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from shared.atomic import write_json, write_text  # noqa: E402
from shared.backends import training_backend  # noqa: E402
from shared.config import GPT2Config  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM


def peak_tflops(gpu_name, override):
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in (gpu_name or ""):
            return value
    return None


def lora_training_flops_per_token(config: GPT2Config, seq_len: int) -> float:
    e, layers = config.n_embd, config.n_layer
    weights = layers * 12 * e * e + e * config.vocab_size
    attention = 4 * layers * seq_len * e  # QK^T and AV, forward, per token
    return 4 * weights + 3 * attention


def train_args(backend, device, precision, seed=0):
    return SimpleNamespace(backend=backend, device=device, precision=precision, random_seed=seed,
                           init_checkpoint=None, shared_dropout=False, attn=None, lr=2e-4,
                           adam_beta1=0.9, adam_beta2=0.999, adam_epislon=1e-6,
                           weight_decay=0.01, no_decay_bias=False, correct_bias=True)


def synchronize(backend):
    if backend == "torch":
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        from jittor_impl.runtime import jt
        jt.sync_all(True)


def bench_training(backend, card, args):
    config = GPT2Config.from_model_card(card, lora_attn_dim=4, lora_attn_alpha=32,
                                        lora_dropout=0.1)
    trainer = training_backend(backend)(config, train_args(backend, args.device, args.precision))
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.seq_len)
    batch = {"input": rng.integers(0, config.vocab_size, shape),
             "target": rng.integers(0, config.vocab_size, shape),
             "mask": np.ones(shape, np.float32)}
    losses = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(backend)
            started = time.perf_counter()
        trainer.set_step(step + 1)
        losses.append(trainer.forward_backward(batch, 1.0, 0.0))
        trainer.update(2e-4, 1.0)
    synchronize(backend)
    seconds = time.perf_counter() - started
    values = trainer.fetch(losses)
    if not all(np.isfinite(values)):
        raise RuntimeError(f"{backend} {card}: non-finite loss in the benchmark")
    tokens = args.steps * args.batch_size * args.seq_len
    flops = tokens * lora_training_flops_per_token(config, args.seq_len)
    del trainer
    return {"tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds / args.steps,
            "model_tflops": flops / seconds / 1e12}


def bench_beam(backend, card, args):
    """Time scripts/gpt2_beam.py's search over the test split, model already on the device."""
    from shared.batching import FTDataset
    from shared.beam_spec import BeamSettings
    config = GPT2Config.from_model_card(card)
    dataset = FTDataset.from_file(args.test_data, args.beam_batch_size, 512, 64)
    settings = BeamSettings(beam=10, eval_len=64, min_length=0, length_penalty=0.8,
                            no_repeat_ngram_size=4, repetition_penalty=1.0,
                            eos_token_ids=(50256, 628))
    if backend == "torch":
        import torch
        from torch_impl import GPT2LMModel
        from torch_impl.beam import beam_search
        model = GPT2LMModel(config).to(args.device).eval()

        def run(batch):
            return beam_search(model, torch.from_numpy(batch["query"]).to(args.device),
                               torch.from_numpy(batch["query_len"]).to(args.device), settings)
    else:
        from jittor_impl import GPT2LMModel, runtime
        from jittor_impl.beam import beam_search
        from jittor_impl.runtime import jt
        runtime.use_device(args.device)
        model = GPT2LMModel(config)
        model.eval()

        def run(batch):
            return beam_search(model, jt.array(batch["query"]), jt.array(batch["query_len"]), settings)
    batches = list(dataset.query_batches(args.beam_batch_size, items=dataset.first_of_each_context()))
    run(batches[0])  # compile / warm up
    synchronize(backend)
    started = time.perf_counter()
    outputs = [np.asarray(out.numpy() if hasattr(out, "numpy") else out) for out in map(run, batches)]
    synchronize(backend)
    seconds = time.perf_counter() - started
    n = sum(len(o) for o in outputs)
    return {"queries": n, "seconds": seconds, "queries_per_s": n / seconds}


def environment(args):
    info = {"python": platform.python_version(), "numpy": np.__version__, "device": args.device,
            "precision": args.precision}
    import torch
    info["torch"] = torch.__version__
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["jittor"] = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                                     "print(m.version('jittor'))"], capture_output=True,
                                    text=True).stdout.strip()
    try:
        info["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1]
    except OSError:
        info["nvcc"] = None
    return info


def render(results, env, args):
    lines = ["# Benchmark: PyTorch vs Jittor", "",
             f"Device: {env['gpu'] or 'CPU'} ({env['device']}), precision {env['precision']}; "
             f"torch {env['torch']}, jittor {env['jittor']}, numpy {env['numpy']}, "
             f"python {env['python']}; {env.get('nvcc') or ''}", "",
             f"Training: LoRA r=4, seq_len {args.seq_len}, batch {args.batch_size}, "
             f"{args.steps} timed steps after {args.warmup} warm-up steps. MFU against "
             f"{results.get('peak_tflops') or 'unknown'} TFLOP/s peak.", "",
             "| model | backend | tokens/s | step (ms) | model TFLOP/s | MFU | jittor/torch tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for card, per in results["training"].items():
        ratio = (per["jittor"]["tokens_per_s"] / per["torch"]["tokens_per_s"]
                 if "jittor" in per and "torch" in per else None)
        for backend, r in per.items():
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            cell = f"{ratio:.2f}" if ratio is not None and backend == "jittor" else ""
            lines.append(f"| {card} | {backend} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                         f"{r['model_tflops']:.1f} | {mfu} | {cell} |")
    if results.get("beam"):
        lines += ["", f"Beam search: {args.test_data} ({'630 MRs' if 'test' in args.test_data else ''}), "
                  f"beam 10, eval_len 64, batch {args.beam_batch_size} MRs, fp32.", "",
                  "| model | backend | MRs | seconds | MRs/s | jittor/torch speed |", "|---|---|---|---|---|---|"]
        for card, per in results["beam"].items():
            ratio = (per["torch"]["seconds"] / per["jittor"]["seconds"]
                     if "jittor" in per and "torch" in per else None)
            for backend, r in per.items():
                cell = f"{ratio:.2f}" if ratio is not None and backend == "jittor" else ""
                lines.append(f"| {card} | {backend} | {r['queries']} | {r['seconds']:.1f} | "
                             f"{r['queries_per_s']:.1f} | {cell} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="torch,jittor")
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
    args = p.parse_args(argv)
    env = environment(args)
    peak = peak_tflops(env["gpu"], args.peak_tflops)
    results = {"environment": env, "peak_tflops": peak, "training": {}, "beam": {}}
    backends = args.backends.split(",")
    for card in filter(None, args.cards.split(",")):
        for backend in backends:
            r = bench_training(backend, card, args)
            r["mfu"] = r["model_tflops"] / peak if peak else None
            results["training"].setdefault(card, {})[backend] = r
            print(f"train {card:8s} {backend:6s} {r['tokens_per_s']:10,.0f} tok/s  "
                  f"{r['step_ms']:7.1f} ms/step  {r['model_tflops']:6.1f} TFLOP/s", flush=True)
    if args.test_data:
        for card in filter(None, args.beam_cards.split(",")):
            for backend in backends:
                r = bench_beam(backend, card, args)
                results["beam"].setdefault(card, {})[backend] = r
                print(f"beam  {card:8s} {backend:6s} {r['queries']} MRs in {r['seconds']:.1f}s "
                      f"({r['queries_per_s']:.1f} MRs/s)", flush=True)
    text = render(results, env, args)
    print(text)
    write_text(args.out, text)
    write_json(os.path.splitext(args.out)[0] + ".json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
