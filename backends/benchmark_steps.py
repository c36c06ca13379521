"""The benchmark's measurements on either backend: training throughput, peak device memory,
beam search, kernel profiles; each in its own process (backends/benchmark_run.py starts them).

Training: the real training step of each backend (the backend objects of shared/train/trainer.py:
forward, backward, clipping, the reference AdamW) on synthetic full-length batches, or a peer's
step (backends/benchmark_peers.py) on the same batches. Variants: `torch` (eager),
`torch+compile` (torch.compile, mode reduce-overhead: CUDA graphs), `torch+autotune` (mode
max-autotune, only where --backends names it), `jittor` (products as direct
cuBLAS calls, permutes as gathers: jittor_impl/precision.py) and `jittor+tuner` (both left to
Jittor's own ops and fusion pass). Beam search: the test split, randomly initialised weights (so
beams rarely stop early). Peak device memory is read through NVML (all the process holds: CUDA
context and allocator caches included), and for torch-based variants also torch's peak of
allocated tensors. Each measurement imports only the framework it measures.
"""
import hashlib
import re
import time
from types import SimpleNamespace

import numpy as np

from shared.decode.beam_spec import BeamSettings
from shared.pipeline.benchmark_plan import (COMPILED_VARIANTS, PEERS, lora_config, peft_config,
                                            split_preference_variant, split_variant,
                                            summarize_kernels, synthetic_batch,
                                            synthetic_preference_batch, training_rates)
from shared.model.config import GPT2Config
from shared.runtime.peak_memory import DevicePeakMemory

from . import training_backend
from .benchmark_peers import build_peer

# the beam rows' decoding flags (gpt2_beam.py's, as the E2E recipe sets them); probes of the
# decoding step under logs/gpu-benchmark take them from here so their shapes match the rows
BEAM_SETTINGS = BeamSettings(beam=10, eval_len=64, min_length=0, length_penalty=0.8,
                             no_repeat_ngram_size=4, repetition_penalty=1.0,
                             eos_token_ids=(50256, 628))


def train_args(backend, device, precision, seed=0, variant=None):
    """The training flags a measurement's backend is built with (`variant`: its row's name)."""
    return SimpleNamespace(backend=backend, device=device, precision=precision, random_seed=seed,
                           init_checkpoint=None, shared_dropout=False, attn=None, lr=2e-4,
                           compile=variant in COMPILED_VARIANTS,
                           compile_mode=COMPILED_VARIANTS.get(variant),
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


def torch_peak_allocated_mib():
    import torch
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def timed_steps(run_step, sync, fetch, args):
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


def _finite(values, name, card):
    if not all(np.isfinite(values)):
        raise RuntimeError(f"{name} {card}: non-finite loss in the benchmark")


def bench_peer(name, card, args):
    """Tokens/s of a peer trainer (backends/benchmark_peers.py) on the same batches."""
    import torch
    config = lora_config(card, args)
    step = build_peer(name, config, args.reference_src)
    batch = {k: torch.from_numpy(v).cuda() for k, v in synthetic_batch(config, args).items()}
    seconds, values = timed_steps(lambda _: step(batch["input"], batch["target"], batch["mask"]),
                                  torch.cuda.synchronize,
                                  lambda losses: torch.stack(losses).float().cpu().tolist(), args)
    _finite(values, name, card)
    return dict(training_rates(config, seconds, args), peak_allocated_mib=torch_peak_allocated_mib())


def bench_training(variant, card, args):
    """Tokens/s of `variant` (see shared.pipeline.benchmark_plan.VARIANTS); with args.profile, for the cards
    of args.cards, also a kernel breakdown."""
    if variant in PEERS:
        return bench_peer(variant, card, args)
    variant, method = split_variant(variant)  # "torch peft=prefix": torch's step, --peft prefix
    backend = variant.split("+")[0]
    if backend == "jittor":
        from jittor_impl import precision
        precision.set_fast_cuda_paths(variant != "jittor+tuner")
    config = lora_config(card, args) if method is None else peft_config(card, args, method)
    trainer = training_backend(backend)(config, train_args(backend, args.device, args.precision,
                                                           variant=variant))
    batch = synthetic_batch(config, args)

    def run_step(number):
        trainer.set_step(number)
        loss = trainer.forward_backward(batch, 1.0, 0.0)
        trainer.update(2e-4, 1.0)
        return loss

    seconds, values = timed_steps(run_step, lambda: synchronize(backend), trainer.fetch, args)
    _finite(values, backend, card)
    result = training_rates(config, seconds, args, method or "lora")
    if backend == "torch":
        result["peak_allocated_mib"] = torch_peak_allocated_mib()
    if args.profile and card in args.cards.split(","):
        result["profile"] = profile_steps(backend, run_step, args.warmup + args.steps + 1, 2)
    if backend == "jittor":
        precision.set_fast_cuda_paths(True)
    del trainer
    return result


def preference_args(backend, task, args):
    """A training step's arguments (train_args) plus the task's settings at the defaults of
    scripts/reward_ft.py, dpo_ft.py or ppo_ft.py; the reward model trains LoRA and its head."""
    from shared.tasks.ppo_task import build_ppo_parser
    from shared.tasks.preference_task import build_preference_parser
    out = train_args(backend, args.device, args.precision)
    parser = build_ppo_parser() if task == "ppo" else build_preference_parser(task)
    names = {"reward": ("margin",), "dpo": ("beta",),
             "ppo": ("clip_range", "value_clip", "vf_coef", "ptx_coef", "temperature")}[task]
    for name in names:
        setattr(out, name, parser.get_default(name))
    out.trainable, out.num_classes, out.class_weights = "lora", 1, None
    return out


def bench_preference(variant, card, args):
    """Tokens/s and steps/s of a preference-tuning step ("torch task=dpo", see
    shared/pipeline/benchmark_plan.py PREFERENCE_TASKS) on synthetic full-length batches of
    --batch_size sequences: the reward model's pairwise loss (GPT-2 + LoRA + a scalar head), DPO
    (the LoRA policy against its frozen reference) or PPO's minibatch update (the LoRA policy and
    its value head, beside the frozen reference and a seeded reward model, as ppo_ft.py holds
    them), with a rollout's scoring forwards (policy and reference log-probabilities, values,
    the reward model's scores of the same rows) timed beside it, sampling left out."""
    from shared.model.classifier_params import init_head
    from shared.tasks.ppo_task import trainer_backend
    from . import dpo_backend, ppo_backend, reward_backend
    backend, task = split_preference_variant(variant)
    if backend == "jittor":
        from jittor_impl import precision
        precision.set_fast_cuda_paths(True)
    config = lora_config(card, args)
    targs = preference_args(backend, task, args)
    if task == "ppo":  # a reward model of the policy's shape, seeded (no file)
        reward_config = GPT2Config(**dict(config.to_dict(), lora_attn_dim=0))
        cls = trainer_backend(ppo_backend(backend), (reward_config, dict(init_head(reward_config, 1, 1))))
    else:
        cls = {"reward": reward_backend, "dpo": dpo_backend}[task](backend)
    trainer = cls(config, targs)
    batch = synthetic_preference_batch(config, args)
    result = {}
    if task == "ppo":
        scored = {k: batch[k] for k in ("input", "target", "length")}

        def rollout_forward(_):
            trainer.score(scored)
            return trainer.rollout_values(scored)

        seconds, _ = timed_steps(rollout_forward, lambda: synchronize(backend), list, args)
        result["rollout_scoring_ms"] = 1000 * seconds / args.steps
        logprobs, _, values = rollout_forward(0)
        advantages = np.random.default_rng(1).standard_normal(values.shape).astype(np.float32)
        batch.update(old_logprobs=logprobs, old_values=values,
                     advantages=advantages * batch["mask"],
                     returns=(values + advantages) * batch["mask"])

    def run_step(number):
        trainer.set_step(number)
        loss = trainer.forward_backward(batch, 1.0, 0.0)
        trainer.update(2e-4, 1.0)
        return loss

    seconds, losses = timed_steps(run_step, lambda: synchronize(backend), trainer.fetch, args)
    _finite(losses, variant, card)
    tokens = args.steps * args.batch_size * args.seq_len
    result.update(tokens_per_s=tokens / seconds, step_ms=1000 * seconds / args.steps,
                  steps_per_s=args.steps / seconds, task=task, backend=backend,
                  trainable_params=trainer.parameter_counts()[0])
    if backend == "torch":
        result["peak_allocated_mib"] = torch_peak_allocated_mib()
    del trainer
    return result


def _short_jittor_kernel(key):
    """Jittor's profiler names a kernel by its jit key; keep the op names and the first dtype."""
    ops = re.findall(r"opkey\d+:(\w+)", key)
    dtype = re.search(r"«T\w*:(\w+)", key)
    name = ("fused[" + ",".join(dict.fromkeys(ops)) + "]") if ops else key.split("«")[0]
    return name + (f" {dtype.group(1)}" if dtype else "")


def jittor_kernel_ops(key):
    """The element operations of a Jittor kernel from its jit key, casts with their types
    ("cast float32>bfloat16, multiply, reduce add"): what a fused kernel computes, which its
    short name does not say (its dtype is that of its first input, often an int32 index array)."""
    ops = []
    for op in re.split(r"«opkey\d+:", key)[1:]:
        kind = op.split("«")[0]
        name = re.search(r"«OP:(\w+)", op)
        if name and name.group(1) == "cast":
            types = re.findall(r"«T[xy]:(\w+)", op)
            ops.append("cast " + ">".join(types))
        elif name:
            ops.append(("reduce " if kind == "reduce" else "") + name.group(1))
        elif kind not in ("array", "broadcast_to"):
            ops.append(kind)
    return ", ".join(dict.fromkeys(ops))


def _jittor_kernel_shape(file_column):
    """The most time-consuming shape recorded by Jittor's profiler (profiler_record_shape)."""
    found = re.search(r"shapes:\n(\[[\d,]*\])", file_column)
    return found.group(1).replace(",]", "]") if found else ""


def profile_steps(backend, step, first_step, count, top=15):
    """Run `count` steps under the framework's profiler: device time per step and top kernels."""
    kernels = {}  # name -> (ms, calls), summed over the profiled steps

    def add(name, ms, calls):
        seen_ms, seen_calls = kernels.get(name, (0.0, 0))
        kernels[name] = (seen_ms + ms, seen_calls + calls)

    if backend == "torch":
        import torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            for i in range(count):
                step(first_step + i)
            synchronize(backend)
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
        with jt.profile_scope(profiler_record_shape=1) as report:
            for i in range(count):
                step(first_step + i)
            synchronize(backend)
        distinct = []  # one row per compiled kernel: what it computes and on which shape
        for row in report[1:]:  # name, file (+ shapes), count, total ns, ...
            add(_short_jittor_kernel(row[0]), float(row[3]) / 1e6, int(row[2]))
            distinct.append({"kernel": _short_jittor_kernel(row[0]), "ops": jittor_kernel_ops(row[0]),
                             "shape": _jittor_kernel_shape(row[1]),
                             "ms_per_step": float(row[3]) / 1e6 / count,
                             "calls_per_step": int(row[2]) / count})
        summary = summarize_kernels(kernels, count, top)
        summary["distinct"] = sorted(distinct, key=lambda d: -d["ms_per_step"])[:top]
        return summary
    return summarize_kernels(kernels, count, top)


def output_digests(outputs):
    """One short digest per MR's output sequence: runs of different caches compare by these."""
    return [hashlib.sha1(np.ascontiguousarray(row, dtype=np.int64).tobytes()).hexdigest()[:12]
            for out in outputs for row in out]


def bench_beam(name, card, args):
    """Time scripts/gpt2_beam.py's search over the test split, model already on the device;
    `name` is a backend, or backend+cache (shared.pipeline.benchmark_plan.beam_key) for another cache."""
    from shared.text.batching import FTDataset
    backend, _, cache = name.partition("+")
    cache = cache or "per_row"
    config = GPT2Config.from_model_card(card, n_embd=args.n_embd, n_layer=args.n_layer,
                                        n_head=args.n_head)
    dataset = FTDataset.from_file(args.test_data, args.beam_batch_size, 512, 64)
    settings = BEAM_SETTINGS
    if backend == "torch":
        import torch
        from torch_impl import GPT2LMModel
        from torch_impl.beam import beam_search
        model = GPT2LMModel(config).to(args.device).eval()

        def run(batch):
            return beam_search(model, torch.from_numpy(batch["query"]).to(args.device),
                               torch.from_numpy(batch["query_len"]).to(args.device), settings,
                               cache=cache).cpu().numpy()
    else:
        from jittor_impl import GPT2LMModel, runtime
        from jittor_impl.beam import beam_search
        from jittor_impl.runtime import jt
        runtime.use_device(args.device)
        model = GPT2LMModel(config)
        model.eval()

        def run(batch):
            return beam_search(model, jt.array(batch["query"]), jt.array(batch["query_len"]), settings,
                               cache=cache).numpy()
    batches = list(dataset.query_batches(args.beam_batch_size, items=dataset.first_of_each_context()))
    run(batches[0])  # compile / warm up
    synchronize(backend)
    started = time.perf_counter()
    outputs = [run(batch) for batch in batches]  # numpy: the host sync of each batch is timed
    synchronize(backend)
    seconds = time.perf_counter() - started
    n = sum(len(o) for o in outputs)
    result = {"queries": n, "seconds": seconds, "queries_per_s": n / seconds, "backend": backend,
              "cache": cache, "output_digests": output_digests(outputs)}
    if args.profile:  # one batch of MRs (64 decoding steps) under the profiler
        result["profile"] = profile_steps(backend, lambda _: run(batches[0]), 0, 1)
    return result


class DeviceMemoryCap:
    """At most `cap_gib` GiB of device memory for this process, CUDA context included (what a
    card of that size offers a process, give or take the driver's own reserve).

    torch: the caching allocator's per-process fraction, set to the cap less what the process
    already holds (its context). Jittor: its own limit, the `device_mem_limit` flag, acts only in
    builds with JT_SAVE_MEM (src/mem/swap.cc: it then swaps to host memory), which the released
    1.3.11 is not; so the rest of the card is taken by one plain cudaMalloc before Jittor
    allocates anything. Jittor's allocator (SFRL) caches freed blocks and, when cudaMalloc fails,
    frees its whole cache and retries, so under the cap its cache shrinks to what fits. The
    flag is set too, for builds that honour it. `ballast_mib` is subtracted from NVML's peak."""

    def __init__(self, backend, cap_gib, memory):
        self.cap_gib, self.ballast_mib = cap_gib, 0.0
        cap = int(cap_gib * 2 ** 30)
        if backend == "torch":
            import torch
            torch.zeros(1, device="cuda")  # the context
            held = memory.read() - memory.base
            total = torch.cuda.get_device_properties(0).total_memory
            self._check(held, cap)
            torch.cuda.set_per_process_memory_fraction((cap - held) / total)
            return
        import ctypes
        from jittor_impl.runtime import jt
        jt.flags.use_cuda = 1
        jt.flags.device_mem_limit = cap
        rt = ctypes.CDLL(self._cudart_path())
        rt.cudaFree(ctypes.c_void_p(0))  # the context, shared with Jittor (the primary one)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
        held = memory.read() - memory.base
        self._check(held, cap)
        ballast = free.value - (cap - held)
        if ballast > 0:
            self._ptr = ctypes.c_void_p()
            err = rt.cudaMalloc(ctypes.byref(self._ptr), ctypes.c_size_t(ballast))
            if err:
                raise RuntimeError(f"--device_mem_cap_gib: cudaMalloc of the {ballast / 2 ** 30:.2f} "
                                   f"GiB outside the cap failed (CUDA error {err})")
            self.ballast_mib = ballast / 2 ** 20

    def _check(self, held, cap):
        if held >= cap:
            raise ValueError(f"--device_mem_cap_gib {self.cap_gib:g}: below the {held / 2 ** 30:.2f} "
                             f"GiB this process holds before any tensor (CUDA context)")

    @staticmethod
    def _cudart_path():
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                if "libcudart.so" in line:
                    return line.split()[-1]
        raise RuntimeError("--device_mem_cap_gib: Jittor has not loaded libcudart (no CUDA?)")

    def explain(self, exc):
        """A one-line error naming the flag when `exc` is an out-of-memory failure, else None."""
        text = f"{type(exc).__name__} {exc}"
        if any(s in text.lower() for s in ("outofmemory", "out of memory", "memoryallocation",
                                           "unable to alloc")):
            return RuntimeError(f"--device_mem_cap_gib {self.cap_gib:g}: the step needs more device "
                                f"memory than the cap ({text.splitlines()[0][:160]})")
        return None


def measure(kind, name, card, args):
    """One measurement ("train" a variant, "beam" a backend, "preference" a task's row) with
    the process's peak device memory added (None without NVML), under --device_mem_cap_gib when
    given."""
    memory = DevicePeakMemory() if args.device == "cuda" else None
    cap = None
    if getattr(args, "device_mem_cap_gib", None):
        if memory is None or memory.handle is None:
            raise ValueError("--device_mem_cap_gib needs a CUDA device with NVML")
        row = split_preference_variant(name) if kind == "preference" else split_variant(name)
        backend = "torch" if name in PEERS else row[0].split("+")[0]
        cap = DeviceMemoryCap(backend, args.device_mem_cap_gib, memory)
    try:
        bench = {"train": bench_training, "beam": bench_beam, "preference": bench_preference}
        result = bench[kind](name, card, args)
    except Exception as exc:
        explained = cap.explain(exc) if cap else None
        if explained is not None:
            raise explained from exc
        raise
    result["peak_device_mib"] = memory.stop_mib() - (cap.ballast_mib if cap else 0) if memory else None
    if cap:
        result["device_mem_cap_gib"] = args.device_mem_cap_gib
    return result
