#!/usr/bin/env python
"""Where a Jittor gpt2.md training step (LoRA r=4, seq 512, bf16) spends its time, on the GPU machine.

1. Step time at several batch sizes, split into building the step in Python (run_step returns)
   and waiting for it (jt.sync_all): a host-bound step grows less than the batch.
2. Every kernel of two steps under jittor.profile_scope (which synchronises after each kernel),
   all rows with their element operations and shape, not only the benchmark's top 15.
3. cProfile of three steps (where the host's time goes), and the same two steps seen by CUPTI through torch.profiler (no synchronisation between kernels,
   so real kernel times and the GPU's idle time), if torch's profiler can see Jittor's kernels.
Writes anatomy.json and anatomy.md to the folder given (default $OUT)."""
import json
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.getcwd())
from backends import training_backend  # noqa: E402
from backends.benchmark_steps import _jittor_kernel_shape, _short_jittor_kernel, jittor_kernel_ops, train_args  # noqa: E402
from shared.pipeline.benchmark_plan import lora_config, synthetic_batch  # noqa: E402


def build(batch_size):
    small = os.environ.get("ANATOMY_SMOKE")  # a CPU smoke test of this script: a tiny model
    args = SimpleNamespace(seq_len=32 if small else 512, batch_size=batch_size, n_embd=64 if small else None,
                           n_layer=2 if small else None, n_head=4 if small else None)
    config = lora_config("gpt2.md", args)
    trainer = training_backend("jittor")(config, train_args("jittor", "cpu" if small else "cuda", "bf16"))
    batch = synthetic_batch(config, args)

    def run_step(number):
        trainer.set_step(number)
        loss = trainer.forward_backward(batch, 1.0, 0.0)
        trainer.update(2e-4, 1.0)
        return loss
    return run_step


def timed(run_step, jt, first, steps):
    build_s = wait_s = 0.0
    jt.sync_all(True)
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        run_step(first + i)
        t1 = time.perf_counter()
        jt.sync_all(True)
        build_s += t1 - t0
        wait_s += time.perf_counter() - t1
    total = time.perf_counter() - start
    return {"step_ms": 1000 * total / steps, "build_ms": 1000 * build_s / steps, "wait_ms": 1000 * wait_s / steps}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", ".")
    os.makedirs(out, exist_ok=True)
    from jittor_impl.runtime import jt
    result = {"batches": {}}
    run8 = None
    for batch_size in (8, 16, 4):
        run_step = build(batch_size)
        for i in range(5):
            run_step(i + 1)
        jt.sync_all(True)
        # synced every step (the benchmark syncs only at the end: compare with its step time)
        result["batches"][batch_size] = timed(run_step, jt, 6, 10)
        print("batch", batch_size, result["batches"][batch_size], flush=True)
        if batch_size == 8:
            run8 = run_step
        else:
            del run_step
    import cProfile
    import io
    import pstats
    profiler = cProfile.Profile()  # the host's side: Python ops, Function.grad calls, jt.sync waits
    jt.sync_all(True)
    profiler.enable()
    for i in range(3):
        run8(50 + i)
    jt.sync_all(True)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
    result["host_profile_3_steps"] = text.getvalue()
    rows = []
    with jt.profile_scope(profiler_record_shape=1) as report:
        for i in range(2):
            run8(100 + i)
        jt.sync_all(True)
    for row in report[1:]:
        rows.append({"kernel": _short_jittor_kernel(row[0]), "ops": jittor_kernel_ops(row[0]),
                     "shape": _jittor_kernel_shape(row[1]), "ms_per_step": float(row[3]) / 2e6,
                     "calls_per_step": int(row[2]) / 2})
    rows.sort(key=lambda r: -r["ms_per_step"])
    result["jittor_profile"] = rows
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
        jt.sync_all(True)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(2):
                run8(200 + i)
            jt.sync_all(True)
        wall = time.perf_counter() - t0
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
        busy, end = 0.0, None
        for s, e in spans:  # union of kernel intervals, in us
            if end is None or s > end:
                busy += e - s
                end = e
            elif e > end:
                busy += e - end
                end = e
        names = {}
        for e in kernels:
            ms, n = names.get(e.name, (0.0, 0))
            names[e.name] = (ms + (e.time_range.end - e.time_range.start) / 1000, n + 1)
        result["cupti"] = {"wall_ms_per_step": 1000 * wall / 2, "kernels_per_step": len(kernels) / 2,
                           "busy_ms_per_step": busy / 2000,
                           "top": sorted(([k, v[0] / 2, v[1] / 2] for k, v in names.items()), key=lambda r: -r[1])[:60]}
        print("cupti", {k: v for k, v in result["cupti"].items() if k != "top"}, flush=True)
    except Exception as exc:  # the profiler may not see another runtime's kernels
        result["cupti"] = {"error": repr(exc)}
    with open(os.path.join(out, "anatomy.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| batch | step ms (synced each step) | build ms | wait ms |", "|---|---|---|---|"]
    lines += [f"| {b} | {r['step_ms']:.1f} | {r['build_ms']:.1f} | {r['wait_ms']:.1f} |" for b, r in result["batches"].items()]
    total = sum(r["ms_per_step"] for r in rows)
    calls = sum(r["calls_per_step"] for r in rows)
    lines += ["", f"jittor.profile_scope: {total:.1f} ms, {calls:.0f} kernels per step", "",
              "| kernel | operations | shape | ms | calls |", "|---|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['ops']} | {r['shape']} | {r['ms_per_step']:.2f} | {r['calls_per_step']:g} |" for r in rows[:80]]
    c = result["cupti"]
    if "error" in c:
        lines += ["", f"CUPTI: {c['error']}"]
    else:
        lines += ["", f"CUPTI (torch.profiler): wall {c['wall_ms_per_step']:.1f} ms, GPU busy {c['busy_ms_per_step']:.1f} ms, "
                      f"{c['kernels_per_step']:.0f} kernels per step", "", "| kernel | ms | calls |", "|---|---|---|"]
        lines += [f"| {k[:110]} | {ms:.2f} | {n:g} |" for k, ms, n in c["top"]]
    lines += ["", "cProfile of three synced steps at batch 8 (host time by function, tottime order):", "",
              "```", result["host_profile_3_steps"].strip(), "```"]
    with open(os.path.join(out, "anatomy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
