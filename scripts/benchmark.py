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
Training variants: `torch` (eager), `torch+compile` (torch.compile, mode reduce-overhead: CUDA
graphs), `jittor` (products as direct cuBLAS calls, permutes as gathers:
jittor_impl/precision.py) and `jittor+tuner` (both left to Jittor's own ops and fusion pass),
and the peers of scripts/benchmark_peers.py (Hugging Face transformers + peft; microsoft/LoRA's
own code with --reference_src). Every measurement runs in its own process; its peak device
memory is read through NVML (all the process holds: CUDA context and allocator caches included),
and for torch-based ones also torch's peak of allocated tensors. With --profile, two extra
steps of each project variant run under the framework's profiler and the report lists where
the device time goes. --extra_cards measures other model sizes with --extra_backends.
Prints a table and writes logs/benchmark.md (and .json) with device and versions.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from shared.atomic import write_json, write_text  # noqa: E402
from shared.backends import training_backend  # noqa: E402
from shared.config import GPT2Config  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_peers import PEERS, build_peer  # noqa: E402

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


def train_args(backend, device, precision, seed=0, compile=False):
    return SimpleNamespace(backend=backend, device=device, precision=precision, random_seed=seed,
                           init_checkpoint=None, shared_dropout=False, attn=None, lr=2e-4,
                           compile=compile,
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


PROJECT_VARIANTS = ("torch", "torch+compile", "jittor", "jittor+tuner")
VARIANTS = PROJECT_VARIANTS + PEERS


class DevicePeakMemory:
    """Peak device memory in use by this process while it runs, polled through NVML every 5 ms
    (device-wide use minus what was in use at the start: each measurement has the GPU alone)."""

    def __init__(self):
        self.handle, self.base, self.peak = None, 0, 0
        try:
            import pynvml
            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.read = lambda: pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
            self.base = self.peak = self.read()
        except Exception:  # no NVML (CPU runs): no figure
            self.handle = None
            return
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            self.peak = max(self.peak, self.read())
            time.sleep(0.005)

    def stop_mib(self):
        if self.handle is None:
            return None
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.read())
        return (self.peak - self.base) / 2 ** 20


def _torch_peak_allocated_mib():
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def _timed_steps(run_step, sync, fetch, args):
    """Seconds for args.steps calls of run_step after args.warmup, and all their losses."""
    losses = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            started = time.perf_counter()
        losses.append(run_step(step + 1))
    sync()
    seconds = time.perf_counter() - started
    return seconds, fetch(losses)


def _rates(config, seconds, args):
    tokens = args.steps * args.batch_size * args.seq_len
    flops = tokens * lora_training_flops_per_token(config, args.seq_len)
    return {"tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds / args.steps,
            "model_tflops": flops / seconds / 1e12}


def synthetic_batch(config, args):
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.seq_len)
    return {"input": rng.integers(0, config.vocab_size, shape),
            "target": rng.integers(0, config.vocab_size, shape),
            "mask": np.ones(shape, np.float32)}


def lora_config(card):
    return GPT2Config.from_model_card(card, lora_attn_dim=4, lora_attn_alpha=32, lora_dropout=0.1)


def bench_peer(name, card, args):
    """Tokens/s of a peer trainer (scripts/benchmark_peers.py) on the same batches."""
    import torch
    config = lora_config(card)
    step = build_peer(name, config, args.reference_src)
    batch = {k: torch.from_numpy(v).cuda() for k, v in synthetic_batch(config, args).items()}
    seconds, values = _timed_steps(lambda _: step(batch["input"], batch["target"], batch["mask"]),
                                   torch.cuda.synchronize,
                                   lambda losses: torch.stack(losses).float().cpu().tolist(), args)
    if not all(np.isfinite(values)):
        raise RuntimeError(f"{name} {card}: non-finite loss in the benchmark")
    return dict(_rates(config, seconds, args), peak_allocated_mib=_torch_peak_allocated_mib())


def bench_training(variant, card, args):
    """Tokens/s of `variant` (see VARIANTS); with args.profile also a kernel breakdown."""
    if variant in PEERS:
        return bench_peer(variant, card, args)
    backend = variant.split("+")[0]
    if backend == "jittor":
        from jittor_impl import precision
        precision.set_fast_cuda_paths(variant != "jittor+tuner")
    config = lora_config(card)
    trainer = training_backend(backend)(config, train_args(backend, args.device, args.precision,
                                                           compile=variant == "torch+compile"))
    batch = synthetic_batch(config, args)

    def run_step(number):
        trainer.set_step(number)
        loss = trainer.forward_backward(batch, 1.0, 0.0)
        trainer.update(2e-4, 1.0)
        return loss

    seconds, values = _timed_steps(run_step, lambda: synchronize(backend), trainer.fetch, args)
    if not all(np.isfinite(values)):
        raise RuntimeError(f"{backend} {card}: non-finite loss in the benchmark")
    result = _rates(config, seconds, args)
    if backend == "torch":
        result["peak_allocated_mib"] = _torch_peak_allocated_mib()
    if args.profile and card in args.cards.split(","):
        result["profile"] = profile_steps(backend, run_step, args.warmup + args.steps + 1, 2)
    if backend == "jittor":
        precision.set_fast_cuda_paths(True)
    del trainer
    return result


def _short_jittor_kernel(key):
    """Jittor's profiler names a kernel by its jit key; keep the op names and the first dtype."""
    import re
    ops = re.findall(r"opkey\d+:(\w+)", key)
    dtype = re.search(r"«T\w*:(\w+)", key)
    name = ("fused[" + ",".join(dict.fromkeys(ops)) + "]") if ops else key.split("«")[0]
    return name + (f" {dtype.group(1)}" if dtype else "")


KERNEL_KINDS = (("matrix products", ("gemm", "nvjet", "cutlass", "cublas", "matmul", "sm90_xmma")),
                ("attention", ("sdpa", "flash", "fmha", "attention")),
                ("fused (inductor)", ("triton_",)),
                ("copies and casts", ("copy", "unary", "cast", "reindex", "getitem", "setitem",
                                      "cat", "index")))


def kernel_kind(name):
    """A coarse class of a kernel, by its name: where a step's device time goes, in a line."""
    lowered = name.lower()
    for kind, marks in KERNEL_KINDS:
        if any(mark in lowered for mark in marks):
            return kind
    return "other element-wise and reductions"


def profile_steps(backend, step, first_step, count, top=15):
    """Run `count` steps under the framework's profiler: device time per step and top kernels."""
    kernels = {}  # name -> (ms, calls), summed over the profiled steps

    def add(name, ms, calls):
        seen_ms, seen_calls = kernels.get(name, (0.0, 0))
        kernels[name] = (seen_ms + ms, seen_calls + calls)

    if backend == "torch":
        import torch
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            for i in range(count):
                step(first_step + i)
            synchronize(backend)
        from torch.autograd import DeviceType
        for event in prof.key_averages():
            # kernels only: an operator's row repeats its kernels' time (and a compiled
            # graph's row all of its kernels'), so summing those would count twice
            if getattr(event, "device_type", DeviceType.CUDA) != DeviceType.CUDA:
                continue
            device_us = getattr(event, "self_device_time_total", None)
            if device_us is None:  # older torch
                device_us = getattr(event, "self_cuda_time_total", 0)
            if device_us > 0:
                add(event.key, device_us / 1000, event.count)
    else:
        from jittor_impl.runtime import jt
        synchronize(backend)
        with jt.profile_scope() as report:
            for i in range(count):
                step(first_step + i)
            synchronize(backend)
        for row in report[1:]:  # name, file, count, total ns, ...
            add(_short_jittor_kernel(row[0]), float(row[3]) / 1e6, int(row[2]))
    total = sum(ms for ms, _ in kernels.values())
    rows = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    kinds = {}
    for name, (ms, calls) in kernels.items():
        kind = kernel_kind(name)
        kinds[kind] = [kinds.get(kind, [0.0, 0])[0] + ms / count, kinds.get(kind, [0.0, 0])[1] + calls / count]
    return {"device_ms_per_step": total / count, "launches_per_step": sum(c for _, c in kernels.values()) / count,
            "kinds": kinds,
            "top": [{"kernel": k[:120], "ms_per_step": ms / count, "calls_per_step": c / count,
                     "share": ms / total if total else 0.0} for k, (ms, c) in rows]}


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
                               torch.from_numpy(batch["query_len"]).to(args.device), settings).cpu().numpy()
    else:
        from jittor_impl import GPT2LMModel, runtime
        from jittor_impl.beam import beam_search
        from jittor_impl.runtime import jt
        runtime.use_device(args.device)
        model = GPT2LMModel(config)
        model.eval()

        def run(batch):
            return beam_search(model, jt.array(batch["query"]), jt.array(batch["query_len"]), settings).numpy()
    batches = list(dataset.query_batches(args.beam_batch_size, items=dataset.first_of_each_context()))
    run(batches[0])  # compile / warm up
    synchronize(backend)
    started = time.perf_counter()
    outputs = [run(batch) for batch in batches]  # numpy: the host sync of each batch is timed
    synchronize(backend)
    seconds = time.perf_counter() - started
    n = sum(len(o) for o in outputs)
    result = {"queries": n, "seconds": seconds, "queries_per_s": n / seconds}
    if args.profile:  # one batch of 105 MRs (64 decoding steps) under the profiler
        result["profile"] = profile_steps(backend, lambda _: run(batches[0]), 0, 1)
    return result


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
             "Peak memory: 'device' is what the process held on the GPU (NVML; CUDA context and "
             "the framework's allocator cache included: what a card must have), 'tensors' "
             "torch's peak of allocated tensors (torch-based variants only). 'vs torch' and "
             "'vs best peer' are tokens/s ratios to this project's torch eager step and to the "
             "fastest peer of the same model.", "",
             "| model | variant | tokens/s | step (ms) | model TFLOP/s | MFU | peak device GiB | "
             "peak tensors GiB | vs torch | vs best peer |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def gib(mib):
        return f"{mib / 1024:.2f}" if mib is not None else ""

    for card, per in results["training"].items():
        peers = [r["tokens_per_s"] for v, r in per.items() if v in PEERS]
        for variant, r in per.items():
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            vs_torch = f"{r['tokens_per_s'] / per['torch']['tokens_per_s']:.2f}" if "torch" in per else ""
            vs_peer = f"{r['tokens_per_s'] / max(peers):.2f}" if peers else ""
            lines.append(f"| {card} | {variant} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                         f"{r['model_tflops']:.1f} | {mfu} | {gib(r.get('peak_device_mib'))} | "
                         f"{gib(r.get('peak_allocated_mib'))} | {vs_torch} | {vs_peer} |")
    if results.get("failed"):
        lines += ["", "Variants that failed: " + "; ".join(f"{k}: {v}" for k, v in results["failed"].items())]
    profiled = [(card, variant, r["profile"]) for card, per in results["training"].items()
                for variant, r in per.items() if r.get("profile")]
    if profiled:
        lines += ["", "## Where the time goes", "",
                  "Two more training steps of each variant under the framework's profiler "
                  "(torch.profiler; jittor.profile_scope, which synchronises after every kernel). "
                  "'device' is the summed kernel time per step; the step time above minus it is "
                  "time the GPU waited for the host."]
        profiled += [(card, f"beam search, {backend}", r["profile"])
                     for card, per in results.get("beam", {}).items()
                     for backend, r in per.items() if r.get("profile")]
        for card, variant, prof in profiled:
            if variant.startswith("beam"):
                lines += ["", f"### {card} {variant}: one batch of {args.beam_batch_size} MRs, "
                              f"device {prof['device_ms_per_step']:.0f} ms, "
                              f"{prof['launches_per_step']:.0f} kernels"]
            else:
                step_ms = results["training"][card][variant]["step_ms"]
                lines += ["", f"### {card} {variant}: step {step_ms:.1f} ms, device "
                              f"{prof['device_ms_per_step']:.1f} ms, {prof['launches_per_step']:.0f} "
                              f"kernels per step"]
            kinds = sorted(prof.get("kinds", {}).items(), key=lambda kv: -kv[1][0])
            lines += ["", "By kind: " + "; ".join(f"{k} {ms:.1f} ms ({calls:.0f} kernels)"
                                                  for k, (ms, calls) in kinds),
                      "", "| kernel | ms | calls | share |", "|---|---|---|---|"]
            for row in prof["top"]:
                name = row["kernel"].replace("|", "/")
                lines.append(f"| {name} | {row['ms_per_step']:.2f} | {row['calls_per_step']:.0f} | "
                             f"{100 * row['share']:.1f}% |")
    if results.get("beam"):
        lines += ["", f"Beam search: {os.path.basename(args.test_data)}, one query per distinct MR, "
                  f"beam 10, eval_len 64, batch {args.beam_batch_size} MRs, fp32, randomly "
                  f"initialised weights, model already on the device (the first batch is a "
                  f"warm-up and is searched again in the timing).", "",
                  "| model | backend | MRs | seconds | MRs/s | jittor/torch speed |", "|---|---|---|---|---|---|"]
        for card, per in results["beam"].items():
            ratio = (per["torch"]["seconds"] / per["jittor"]["seconds"]
                     if "jittor" in per and "torch" in per else None)
            for backend, r in per.items():
                cell = f"{ratio:.2f}" if ratio is not None and backend == "jittor" else ""
                lines.append(f"| {card} | {backend} | {r['queries']} | {r['seconds']:.1f} | "
                             f"{r['queries_per_s']:.1f} | {cell} |")
    return "\n".join(lines) + "\n"


RESULT_PREFIX = "BENCHMARK-RESULT "


def save(results, env, args):
    text = render(results, env, args)
    write_text(args.out, text)
    write_json(os.path.splitext(args.out)[0] + ".json", results)
    return text


def child_environment(name):
    """The peers run without the folders that hold Jittor on PYTHONPATH: Jittor 1.3.11 needs
    numpy<2, installed beside it, and transformers' imports (scipy, scikit-learn) fail there."""
    env = dict(os.environ)
    if name in PEERS and env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            d for d in env["PYTHONPATH"].split(os.pathsep)
            if not os.path.isdir(os.path.join(d, "jittor")))
    return env


def measure_in_child(kind, name, card, argv):
    """One measurement in a fresh process: no memory held by the other framework's caches, and
    no interference between them (torch's eager steps ran ~1.6x slower with Jittor loaded)."""
    command = [sys.executable, os.path.abspath(__file__), *argv, "--_measure", kind, name, card]
    proc = subprocess.run(command, capture_output=True, text=True, env=child_environment(name))
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
    p.add_argument("--cards", default="gpt2.md")
    p.add_argument("--extra_cards", default="gpt2.sm,gpt2.lg",
                   help="more model sizes, measured with --extra_backends only")
    p.add_argument("--extra_backends", default="torch,jittor")
    p.add_argument("--reference_src", default=None,
                   help="a checkout of github.com/microsoft/LoRA: adds its examples/NLG model as a peer")
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
        memory = DevicePeakMemory() if args.device == "cuda" else None
        result = bench_training(name, card, args) if kind == "train" else bench_beam(name, card, args)
        result["peak_device_mib"] = memory.stop_mib() if memory else None
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    env = environment(args)
    peak = peak_tflops(env["gpu"], args.peak_tflops)
    results = {"environment": env, "peak_tflops": peak, "training": {}, "beam": {}, "failed": {}}
    variants = [v for v in args.backends.split(",") if v]
    extra_variants = [v for v in args.extra_backends.split(",") if v]
    unknown = sorted(set(variants + extra_variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    if not args.reference_src:
        variants = [v for v in variants if not v.startswith("reference")]
    def train(card, card_variants):
        for variant in card_variants:
            try:
                r = measure_in_child("train", variant, card, argv)
            except Exception as exc:  # one failing variant must not lose the others' numbers
                results["failed"][f"{card} {variant}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"train {card} {variant} FAILED: {exc}", flush=True)
                continue
            r["mfu"] = r["model_tflops"] / peak if peak else None
            results["training"].setdefault(card, {})[variant] = r
            save(results, env, args)  # partial results survive an interrupted run
            print(f"train {card:8s} {variant:16s} {r['tokens_per_s']:10,.0f} tok/s  "
                  f"{r['step_ms']:7.1f} ms/step  {r['model_tflops']:6.1f} TFLOP/s  "
                  f"peak {r.get('peak_device_mib') or 0:8.0f} MiB", flush=True)

    for card in filter(None, args.cards.split(",")):
        train(card, variants)
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
    for card in filter(None, args.extra_cards.split(",")):  # model sizes, after the main figures
        train(card, extra_variants)
    print(save(results, env, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
