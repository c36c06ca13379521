"""The benchmark's model of the work (variants, workload, FLOPs per token, peak throughput,
kernel kinds) and its report.

scripts/benchmark.py measures (the measurements themselves: backends/benchmark_steps.py, the peers:
backends/benchmark_peers.py); the numbers become MFU and ratios here and are rendered as
logs/benchmark.md (and .json). Model FLOPs per token for LoRA training are counted as 2N
(forward) + 2N (input gradients; frozen weights need no weight gradients) + the attention
score/value products (3 x 4 * n_layer * seq_len * n_embd, forward and backward),
N = non-embedding weights + the tied output head (n_embd x vocab). MFU = model FLOP/s / peak.
The report renders from the JSON record alone (its "settings" hold the run's arguments).
"""
import os
import re

import numpy as np

from shared.runtime.atomic import write_json, write_text
from shared.model.config import GPT2Config
from shared.runtime import environment as probe
from shared.text.tokenizer import EOT_ID
from shared.pipeline.report import markdown_table

PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM

# This project's training steps, then the other trainers of the same model it is compared with
# (backends/benchmark_peers.py builds them; the reference peers need --reference_src).
PROJECT_VARIANTS = ("torch", "torch+compile", "jittor", "jittor+tuner")
PEERS = ("hf+peft", "hf+peft+compile", "reference", "reference+bf16")
VARIANTS = PROJECT_VARIANTS + PEERS  # the default --backends
# measured only where --backends names them: max-autotune compiles for minutes
OPT_IN_VARIANTS = ("torch+autotune",)
KNOWN_VARIANTS = VARIANTS + OPT_IN_VARIANTS
# the torch variants run through torch.compile, and the --compile_mode of each (None: the
# training flag's default, reduce-overhead on CUDA)
COMPILED_VARIANTS = {"torch+compile": None, "torch+autotune": "max-autotune"}
BEAM_BACKENDS = ("torch", "jittor")
# --peft_methods: one row per method and backend ("torch peft=prefix"), each method with the
# default sizes of its flags (shared/model/peft_methods.py), LoRA r=4 as the rows above.
PEFT_BACKENDS = ("torch", "jittor")
PEFT_MARK = " peft="

# --preference_tasks: one row per preference-tuning step and backend ("torch task=dpo"): the
# reward model's pairwise step, DPO's (the frozen reference's forward included) and PPO's
# minibatch update (its rollout's scoring forwards timed beside it), LoRA r=4 as above.
PREFERENCE_TASKS = ("reward", "dpo", "ppo")
PREFERENCE_MARK = " task="

# The run's arguments the report needs, kept in the JSON record so it renders on its own.
SETTINGS = ("seq_len", "batch_size", "steps", "warmup", "test_data", "beam_batch_size",
            "n_embd", "n_layer", "n_head", "device_mem_cap_gib")
BEAM_SETTINGS = ("test_data", "beam_batch_size")  # a resumed run may add the beam part with them


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


def training_flops_per_token(config: GPT2Config, seq_len: int, method: str = "lora") -> float:
    """Model FLOPs per token of `method`: LoRA's count, plus 2 per weight that gets a weight
    gradient (all of them for full fine-tuning, the last two blocks' for top2; the other methods'
    trainable weights are too few to count). Virtual tokens are not counted as tokens."""
    flops = lora_training_flops_per_token(config, seq_len)
    block = 12 * config.n_embd * config.n_embd
    if method == "full":
        return flops + 2 * (config.n_layer * block + config.n_embd * config.vocab_size)
    if method == "top2":
        return flops + 2 * min(2, config.n_layer) * block
    return flops


def peft_variants(methods) -> list:
    """The rows of --peft_methods: each method in each backend, e.g. "torch peft=prefix"."""
    return [f"{backend}{PEFT_MARK}{method}" for method in methods for backend in PEFT_BACKENDS]


def split_variant(variant) -> "tuple[str, str | None]":
    """(the project variant, the --peft method or None) of a row's name."""
    name, _, method = variant.partition(PEFT_MARK)
    return name, method or None


def preference_variants(tasks) -> list:
    """The rows of --preference_tasks: each task in each backend, e.g. "torch task=dpo"."""
    return [f"{backend}{PREFERENCE_MARK}{task}" for task in tasks for backend in PEFT_BACKENDS]


def split_preference_variant(variant) -> "tuple[str, str]":
    """(backend, task) of a --preference_tasks row's name."""
    backend, _, task = variant.partition(PREFERENCE_MARK)
    return backend, task


def training_rates(config: GPT2Config, seconds: float, args, method: str = "lora") -> dict:
    """Tokens/s, step time and model TFLOP/s of args.steps timed steps that took `seconds`."""
    tokens = args.steps * args.batch_size * args.seq_len
    flops = tokens * training_flops_per_token(config, args.seq_len, method)
    return {"tokens_per_s": tokens / seconds, "step_ms": 1000 * seconds / args.steps,
            "model_tflops": flops / seconds / 1e12}


# ---------------------------------------------------------------------------- the workload
def lora_config(card, args) -> GPT2Config:
    """The benchmarked model: the card's shape (or args' n_embd/n_layer/n_head) with LoRA r=4."""
    return GPT2Config.from_model_card(card, n_embd=args.n_embd, n_layer=args.n_layer,
                                      n_head=args.n_head, lora_attn_dim=4, lora_attn_alpha=32,
                                      lora_dropout=0.1)


def peft_config(card, args, method) -> GPT2Config:
    """The benchmarked model of a --peft_methods row: LoRA as lora_config, the other methods
    with their flags' default sizes (20 virtual tokens, adapters of width 16, ...)."""
    if method == "lora":
        return lora_config(card, args)
    from shared.model.peft_methods import DEFAULTS, METHOD_FLAGS, PeftSettings
    settings = None if method == "full" else PeftSettings(method, **{
        key: DEFAULTS[key] for key, methods in METHOD_FLAGS.items() if method in methods})
    return GPT2Config.from_model_card(card, n_embd=args.n_embd, n_layer=args.n_layer,
                                      n_head=args.n_head, lora_attn_dim=0, peft=settings)


def synthetic_batch(config: GPT2Config, args) -> dict:
    """One full-length batch of random tokens, the same for every variant (seed 0)."""
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.seq_len)
    return {"input": rng.integers(0, config.vocab_size, shape),
            "target": rng.integers(0, config.vocab_size, shape),
            "mask": np.ones(shape, np.float32)}


def synthetic_preference_batch(config: GPT2Config, args) -> dict:
    """A full-length batch of --batch_size random sequences laid out as the preference tasks'
    batches (shared/text/preference_data.py): the first half of each row is the prompt, the
    rest the response (`mask` marks the positions whose next token is a response token), every
    row --seq_len long. For the reward model and DPO the first half of the rows are the chosen
    responses and the second half the rejected ones, so --batch_size must be even."""
    rng = np.random.default_rng(0)
    rows, width = args.batch_size, args.seq_len
    inputs = rng.integers(0, config.vocab_size, (rows, width))
    target = np.full((rows, width), EOT_ID, dtype=np.int64)
    target[:, :-1] = inputs[:, 1:]
    mask = np.zeros((rows, width), np.float32)
    mask[:, width // 2 - 1:width - 1] = 1.0
    return {"input": inputs, "target": target, "mask": mask,
            "length": np.full(rows, width, dtype=np.int64)}


# ---------------------------------------------------------------------------- kernel profiles
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


def summarize_kernels(kernels: dict, count: int, top: int = 15) -> dict:
    """A profile's record from {kernel name: (ms, calls)} summed over `count` steps: device time
    and launches per step, time by kernel kind and the `top` kernels by time."""
    total = sum(ms for ms, _ in kernels.values())
    rows = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    kinds = {}
    for name, (ms, calls) in kernels.items():
        seen_ms, seen_calls = kinds.get(kernel_kind(name), (0.0, 0))
        kinds[kernel_kind(name)] = [seen_ms + ms / count, seen_calls + calls / count]
    return {"device_ms_per_step": total / count,
            "launches_per_step": sum(c for _, c in kernels.values()) / count,
            "kinds": kinds,
            "top": [{"kernel": k[:120], "ms_per_step": ms / count, "calls_per_step": c / count,
                     "share": ms / total if total else 0.0} for k, (ms, c) in rows]}


# ---------------------------------------------------------------------------- the report
def benchmark_environment(device, precision):
    """The machine of a benchmark (shared/runtime/environment.py's probe) and its settings."""
    info = probe.versions(("numpy", "torch", "jittor"))
    info.update(device=device, precision=precision, gpu=probe.gpu_name(), nvcc=probe.nvcc_version())
    return info


def benchmark_settings(args) -> dict:
    return {name: getattr(args, name, None) for name in SETTINGS}


def _gib(mib):
    return f"{mib / 1024:.2f}" if mib is not None else ""


def _ratio(value, base):
    return f"{value / base:.2f}" if base else ""


def _training_table(training):
    """One row per model and variant: rates, MFU, peak memory, ratios to torch and best peer."""
    rows = []
    for card, per in training.items():
        best_peer = max((r["tokens_per_s"] for v, r in per.items() if v in PEERS), default=None)
        torch_rate = per["torch"]["tokens_per_s"] if "torch" in per else None  # LoRA, eager
        for variant, r in per.items():
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            rows.append([card, variant, f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}",
                         f"{r['model_tflops']:.1f}", mfu, _gib(r.get("peak_device_mib")),
                         _gib(r.get("peak_allocated_mib")), _ratio(r["tokens_per_s"], torch_rate),
                         _ratio(r["tokens_per_s"], best_peer)])
    return markdown_table(["model", "variant", "tokens/s", "step (ms)", "model TFLOP/s", "MFU",
                           "peak device GiB", "peak tensors GiB", "vs torch", "vs best peer"], rows)


def _preference(results, settings):
    """The --preference_tasks rows: one per model, task and backend."""
    rows = []
    for card, per in results["preference"].items():
        for variant, r in per.items():
            backend, task = split_preference_variant(variant)
            torch_row = per.get(f"torch{PREFERENCE_MARK}{task}")
            rows.append([card, task, backend, f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}",
                         f"{r['steps_per_s']:.2f}",
                         f"{r['rollout_scoring_ms']:.1f}" if "rollout_scoring_ms" in r else "",
                         _gib(r.get("peak_device_mib")), _gib(r.get("peak_allocated_mib")),
                         _ratio(r["tokens_per_s"], torch_row["tokens_per_s"])
                         if torch_row and backend != "torch" else ""])
    return ["", "## Preference tuning", "",
            f"One training step of each task (--preference_tasks) on {settings['batch_size']} "
            f"random sequences of {settings['seq_len']} tokens (the second half of each the "
            "response), LoRA r=4: `reward` the reward model's pairwise loss (GPT-2 + a scalar head "
            "on the last token; half the rows chosen, half rejected), `dpo` DPO's loss (the "
            "policy's forward and backward and the frozen reference's forward), `ppo` PPO's "
            "minibatch update (clipped policy and value losses; the frozen reference and the "
            "reward model held beside the policy, as ppo_ft.py holds them). 'rollout scoring' "
            "is one rollout's forwards over the same rows (the reward model's scores, the policy's "
            "and the reference's log-probabilities and the values), sampling not included. "
            "'jittor/torch' is the ratio of tokens/s.", "",
            markdown_table(["model", "task", "backend", "tokens/s", "step (ms)", "steps/s",
                            "rollout scoring (ms)", "peak device GiB", "peak tensors GiB",
                            "jittor/torch"], rows)]


def _profile_section(title, prof):
    """A profile's heading, its time by kernel kind and its top kernels."""
    kinds = sorted(prof.get("kinds", {}).items(), key=lambda kv: -kv[1][0])
    rows = [[row["kernel"].replace("|", "/"), f"{row['ms_per_step']:.2f}",
             f"{row['calls_per_step']:.0f}", f"{100 * row['share']:.1f}%"] for row in prof["top"]]
    lines = ["", title, "", "By kind: " + "; ".join(f"{k} {ms:.1f} ms ({calls:.0f} kernels)"
                                                    for k, (ms, calls) in kinds),
             "", markdown_table(["kernel", "ms", "calls", "share"], rows)]
    if prof.get("distinct"):  # Jittor: each compiled kernel, what it computes and its shape
        lines += ["", "The same steps by compiled kernel (its element operations, casts with their "
                  "types, and the shape that took most of its time):", "",
                  markdown_table(["kernel", "operations", "shape", "ms", "calls"],
                                 [[d["kernel"], d["ops"], d["shape"], f"{d['ms_per_step']:.2f}",
                                   f"{d['calls_per_step']:.0f}"] for d in prof["distinct"]])]
    return lines


def _profiles(results, settings):
    lines = ["", "## Where the time goes", "",
             "Two more training steps of each variant under the framework's profiler "
             "(torch.profiler; jittor.profile_scope, which synchronises after every kernel). "
             "'device' is the summed kernel time per step; the step time above minus it is "
             "time the GPU waited for the host."]
    titled = [(f"### {card} {variant}: step {r['step_ms']:.1f} ms, device "
               f"{r['profile']['device_ms_per_step']:.1f} ms, "
               f"{r['profile']['launches_per_step']:.0f} kernels per step", r["profile"])
              for card, per in results["training"].items()
              for variant, r in per.items() if r.get("profile")]
    titled += [(f"### {card} beam search, {backend}: one batch of {settings['beam_batch_size']} "
                f"MRs, device {r['profile']['device_ms_per_step']:.0f} ms, "
                f"{r['profile']['launches_per_step']:.0f} kernels", r["profile"])
               for card, per in results.get("beam", {}).items()
               for backend, r in per.items() if r.get("profile")]
    for title, prof in titled:
        lines += _profile_section(title, prof)
    return lines


def beam_key(backend, cache):
    """A beam record's name: the backend alone for the exact per-row cache (as records before
    the cache switch), else backend+cache."""
    return backend if cache == "per_row" else f"{backend}+{cache}"


def _beam(results, settings):
    lines = ["", f"Beam search: {os.path.basename(settings['test_data'])}, one query per "
             f"distinct MR, beam 10, eval_len 64, batch {settings['beam_batch_size']} MRs, fp32, "
             f"randomly initialised weights, model already on the device (the first batch is a "
             f"warm-up and is searched again in the timing).", ""]
    rows, notes = [], []
    for card, per in results["beam"].items():
        for key, r in per.items():
            backend, cache = r.get("backend", key), r.get("cache", "per_row")
            base = per.get(beam_key("torch", cache))
            cell = f"{base['seconds'] / r['seconds']:.2f}" if base and backend == "jittor" else ""
            rows.append([card, key, r["queries"], f"{r['seconds']:.1f}",
                         f"{r['queries_per_s']:.1f}", cell])
            exact = per.get(beam_key(backend, "per_row"))
            if cache != "per_row" and exact and r.get("output_digests"):
                same = sum(a == b for a, b in zip(r["output_digests"], exact["output_digests"]))
                notes.append(f"- {card} {key}: {exact['seconds'] / r['seconds']:.2f}x the speed "
                             f"of {backend}'s per-row cache; the same output for {same} of "
                             f"{r['queries']} MRs; peak device memory "
                             f"{_gib(r.get('peak_device_mib')) or '?'} GiB vs "
                             f"{_gib(exact.get('peak_device_mib')) or '?'} GiB")
    lines.append(markdown_table(["model", "backend", "MRs", "seconds", "MRs/s",
                                 "jittor/torch speed"], rows))
    if notes:
        lines += ["", "Caches (torch_impl/beam.py `cache`): `per_row`, the exact path, holds each "
                  "row's query keys and values too; `+shared_prefix` holds them once per query and "
                  "reorders only the generated part (its attention sums in another order)."] + notes
    return lines


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TELLING = re.compile(r"^\s*(\w+(Error|Exception)\b|Reason:|.*Check failed)")


def failure_summary(text, keep=3, width=200):
    """The lines of a child's output that say what went wrong (exception lines, Jittor's
    "Reason:" and "Check failed"), colour codes removed: a JIT failure's output ends in a
    compiler command line that would otherwise fill the report. " / " parts count as lines, so a
    summary kept in a record renders as it was kept."""
    lines = [_ANSI.sub("", line).strip() for line in re.split(r"\n| / ", text)]
    telling = [line[:width] for line in lines if line and _TELLING.match(line)]
    return " / ".join(telling[-keep:]) if telling else " ".join(" ".join(lines).split())[-width:]


def render(results):
    """logs/benchmark.md from the JSON record (environment, settings and measurements)."""
    env, settings = results["environment"], results["settings"]
    shape = {k: settings.get(k) for k in ("n_embd", "n_layer", "n_head") if settings.get(k)}
    lines = ["# Benchmark: PyTorch vs Jittor", "",
             f"Device: {env['gpu'] or 'CPU'} ({env['device']}), precision {env['precision']}; "
             f"torch {env['torch']}, jittor {env['jittor']}, numpy {env['numpy']}, "
             f"python {env['python']}; {env.get('nvcc') or ''}", "",
             f"Training: LoRA r=4, seq_len {settings['seq_len']}, batch {settings['batch_size']}, "
             f"{settings['steps']} timed steps after {settings['warmup']} warm-up steps. MFU "
             f"against {results.get('peak_tflops') or 'unknown'} TFLOP/s peak."
             + ("".join(f" Every card's {k} set to {v}." for k, v in shape.items()))
             + (f" Every measurement ran under a device-memory cap of {settings['device_mem_cap_gib']:g} "
                "GiB per process (--device_mem_cap_gib; CUDA context included)."
                if settings.get("device_mem_cap_gib") else ""), "",
             "Peak memory: 'device' is what the process held on the GPU (NVML; CUDA context and "
             "the framework's allocator cache included: what a card must have), 'tensors' "
             "torch's peak of allocated tensors (torch-based variants only). 'vs torch' and "
             "'vs best peer' are tokens/s ratios to this project's torch eager step and to the "
             "fastest peer of the same model."]
    if results.get("sessions", 1) > 1:
        lines += ["", f"Measured in {results['sessions']} runs of scripts/benchmark.py (--resume "
                  "keeps what an earlier run measured), each on a fresh machine of this GPU kind."]
    if results["training"] or not (results.get("preference") or results.get("beam")):
        lines += ["", _training_table(results["training"])]
    if results.get("skipped"):
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())]
    if results.get("failed"):
        lines += ["", "Variants that failed: " + "; ".join(f"{k}: {failure_summary(v)}"
                                                          for k, v in results["failed"].items())]
    if results.get("preference"):
        lines += _preference(results, settings)
    if any(r.get("profile") for part in ("training", "beam")
           for per in results.get(part, {}).values() for r in per.values()):
        lines += _profiles(results, settings)
    if results.get("beam"):
        lines += _beam(results, settings)
    return "\n".join(lines) + "\n"


def save(results, out):
    """Write the report to `out` and the record beside it (.json), both atomically."""
    text = render(results)
    write_text(out, text)
    write_json(os.path.splitext(out)[0] + ".json", results)
    return text
