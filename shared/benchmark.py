"""The benchmark's model of the work (FLOPs per token, peak throughput) and its report.

scripts/benchmark.py measures (the measurements themselves: backends/benchmark.py); the numbers
become MFU here and are rendered as logs/benchmark.md (and .json). Model FLOPs per token for LoRA
training are counted as 2N (forward) + 2N (input gradients; frozen weights need no weight
gradients) + the attention score/value products (3 x 4 * n_layer * seq_len * n_embd, forward and
backward), N = non-embedding weights + the tied output head (n_embd x vocab).
MFU = model FLOP/s / peak.
"""
import os

from .atomic import write_json, write_text
from .config import GPT2Config
from . import environment as probe
from .report import markdown_table

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


def benchmark_environment(device, precision):
    """The machine of a benchmark (shared/environment.py's probe) and its settings."""
    info = probe.versions(("numpy", "torch", "jittor"))
    info.update(device=device, precision=precision, gpu=probe.gpu_name(), nvcc=probe.nvcc_version())
    return info


def render(results, env, args):
    lines = ["# Benchmark: PyTorch vs Jittor", "",
             f"Device: {env['gpu'] or 'CPU'} ({env['device']}), precision {env['precision']}; "
             f"torch {env['torch']}, jittor {env['jittor']}, numpy {env['numpy']}, "
             f"python {env['python']}; {env.get('nvcc') or ''}", "",
             f"Training: LoRA r=4, seq_len {args.seq_len}, batch {args.batch_size}, "
             f"{args.steps} timed steps after {args.warmup} warm-up steps. MFU against "
             f"{results.get('peak_tflops') or 'unknown'} TFLOP/s peak.", ""]
    rows = []
    for card, per in results["training"].items():
        for variant, r in per.items():
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            cells = []
            for base in ("torch", "torch+compile"):
                ok = variant.startswith("jittor") and base in per
                cells.append(f"{r['tokens_per_s'] / per[base]['tokens_per_s']:.2f}" if ok else "")
            rows.append([card, variant, f"{r['tokens_per_s']:,.0f}", f"{r['step_ms']:.1f}",
                         f"{r['model_tflops']:.1f}", mfu, cells[0], cells[1]])
    lines.append(markdown_table(["model", "variant", "tokens/s", "step (ms)", "model TFLOP/s", "MFU",
                                 "vs torch", "vs torch+compile"], rows))
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
        for card, variant, prof in profiled:
            step_ms = results["training"][card][variant]["step_ms"]
            lines += ["", f"### {card} {variant}: step {step_ms:.1f} ms, device "
                          f"{prof['device_ms_per_step']:.1f} ms, {prof['launches_per_step']:.0f} "
                          f"kernels per step", ""]
            rows = [[row["kernel"], f"{row['ms_per_step']:.2f}", f"{row['calls_per_step']:.0f}",
                     f"{100 * row['share']:.1f}%"] for row in prof["top"]]
            lines.append(markdown_table(["kernel", "ms/step", "calls/step", "share"], rows))
    if results.get("beam"):
        lines += ["", f"Beam search: {os.path.basename(args.test_data)}, one query per distinct MR, "
                  f"beam 10, eval_len 64, batch {args.beam_batch_size} MRs, fp32, randomly "
                  f"initialised weights, model already on the device (the first batch is a "
                  f"warm-up and is searched again in the timing).", ""]
        rows = []
        for card, per in results["beam"].items():
            ratio = (per["torch"]["seconds"] / per["jittor"]["seconds"]
                     if "jittor" in per and "torch" in per else None)
            for backend, r in per.items():
                cell = f"{ratio:.2f}" if ratio is not None and backend == "jittor" else ""
                rows.append([card, backend, r["queries"], f"{r['seconds']:.1f}",
                             f"{r['queries_per_s']:.1f}", cell])
        lines.append(markdown_table(["model", "backend", "MRs", "seconds", "MRs/s",
                                     "jittor/torch speed"], rows))
    return "\n".join(lines) + "\n"


def save(results, env, args):
    text = render(results, env, args)
    write_text(args.out, text)
    write_json(os.path.splitext(args.out)[0] + ".json", results)
    return text


