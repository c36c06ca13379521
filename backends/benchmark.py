"""The benchmark's measurements on either backend: training throughput, beam search, profiles.

scripts/benchmark.py runs each in its own process; each imports only the framework it measures.
Training: the real training step of each backend (the backend objects of shared/trainer.py:
forward, backward, clipping, the reference AdamW) on synthetic full-length batches.
Beam search: the test split, randomly initialised weights (so beams rarely stop early).
Training variants: `torch` (eager), `torch+compile` (torch.compile), `jittor` (products as direct
cuBLAS calls, permutes as gathers: jittor_impl/precision.py) and `jittor+tuner` (both left to
Jittor's own ops and fusion pass).
"""
import time
from types import SimpleNamespace

import numpy as np

from shared.benchmark import lora_training_flops_per_token
from shared.config import GPT2Config

from . import training_backend

VARIANTS = ("torch", "torch+compile", "jittor", "jittor+tuner")


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


def bench_training(variant, card, args):
    """Tokens/s of `variant` (see VARIANTS); with args.profile also a kernel breakdown."""
    backend = variant.split("+")[0]
    if backend == "jittor":
        from jittor_impl import precision
        precision.set_fast_cuda_paths(variant != "jittor+tuner")
    config = GPT2Config.from_model_card(card, lora_attn_dim=4, lora_attn_alpha=32,
                                        lora_dropout=0.1)
    trainer = training_backend(backend)(config, train_args(backend, args.device, args.precision,
                                                           compile=variant == "torch+compile"))
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
    result = {"tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds / args.steps,
              "model_tflops": flops / seconds / 1e12}
    if args.profile:
        def step(number):
            trainer.set_step(number)
            trainer.forward_backward(batch, 1.0, 0.0)
            trainer.update(2e-4, 1.0)
        result["profile"] = profile_steps(backend, step, args.warmup + args.steps + 1, 2)
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


def profile_steps(backend, step, first_step, count, top=10):
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
        for event in prof.key_averages():
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
    return {"device_ms_per_step": total / count, "launches_per_step": sum(c for _, c in kernels.values()) / count,
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
    return {"queries": n, "seconds": seconds, "queries_per_s": n / seconds}


