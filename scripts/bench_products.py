#!/usr/bin/env python
"""Every matrix product of one LoRA training step, forward and backward, timed in Jittor and torch.

The products are those jittor_impl/precision.py issues for a model card at --batch_size x
--seq_len (bf16 operands, float32 accumulation): the weight products as 2-D cuBLAS GEMMs with
cuBLAS's own transpose flags (Jittor's `cublas_matmul(a, b, trans_a, trans_b)`; torch.matmul on
transposed views, which torch also hands to cuBLAS as flags), the attention's batched products
(`cublas_batched_matmul`, torch.bmm) and, for the products read transposed, Jittor's
`jt.matmul(a, b.transpose(1, 0))`, which materialises the transpose first. Each backend runs in
its own process (this script with --_backend); the table gives milliseconds per call (median of
--repeats runs of n calls, n sized to ~50 ms of work, launch overheads included: what the step
pays) and calls per step.

    python3 scripts/bench_products.py --out logs/gpu-benchmark/<folder>/products.md
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from shared.runtime.atomic import write_json, write_text
from shared.model.config import MODEL_CARDS

PREFIX = "PRODUCTS-RESULT "


def products(card, batch, seq, rank):
    """(label, batch count, M, K, N, trans_a, trans_b, calls per step): c = op(a) op(b), where
    op(a) is (M, K) and op(b) is (K, N); a stored (K, M) when trans_a, b stored (N, K) when trans_b."""
    e, layers, heads = MODEL_CARDS[card]
    r, rows, vocab, d = rank, batch * seq, 50257, e // heads
    bh = batch * heads
    out = []
    for name, k, n in (("c_attn", e, 3 * e), ("attn.c_proj", e, e), ("mlp.c_fc", e, 4 * e),
                       ("mlp.c_proj", 4 * e, e)):
        out.append((f"{name} forward x W", 1, rows, k, n, False, False, layers))
        out.append((f"{name} backward dx = g W^T", 1, rows, n, k, False, True, layers))
    out += [
        ("lora_A forward x A^T", 1, rows, e, 2 * r, False, True, layers),
        ("lora_B forward (x A^T)_q B_q^T (and _v)", 1, rows, r, e, False, True, 2 * layers),
        ("lora_B backward d(x A^T)_q = g_q B_q", 1, rows, e, r, False, False, 2 * layers),
        ("lora_B backward dB_q = g_q^T (x A^T)_q", 1, e, rows, r, True, False, 2 * layers),
        ("lora_A backward dx = g A", 1, rows, 2 * r, e, False, False, layers),
        ("lora_A backward dA = g^T x", 1, 2 * r, rows, e, True, False, layers),
        ("lm_head forward h wte^T", 1, rows, e, vocab, False, True, 1),
        ("lm_head backward dh = g wte", 1, rows, vocab, e, False, False, 1),
        ("attention q k^T (batched)", bh, seq, d, seq, False, True, layers),
        ("attention p v (batched)", bh, seq, seq, d, False, False, layers),
        ("attention backward dp = g v^T (batched)", bh, seq, d, seq, False, True, layers),
        ("attention backward dv = p^T g (batched)", bh, seq, seq, d, True, False, layers),
        ("attention backward dq = ds k (batched)", bh, seq, seq, d, False, False, layers),
        ("attention backward dk = ds^T q (batched)", bh, seq, seq, d, True, False, layers),
    ]
    return out


def _stored(m, k, n, ta, tb):
    return ((k, m) if ta else (m, k)), ((n, k) if tb else (k, n))


def _calls_for(flops):
    return max(3, min(200, int(50e-3 * 300e12 / max(flops, 1))))


def run_torch(items, repeats):
    import torch
    results = []
    for label, nb, m, k, n, ta, tb, _ in items:
        sa, sb = _stored(m, k, n, ta, tb)
        a = torch.randn((nb,) + sa if nb > 1 else sa, device="cuda", dtype=torch.bfloat16)
        b = torch.randn((nb,) + sb if nb > 1 else sb, device="cuda", dtype=torch.bfloat16)
        a_op = a.transpose(-2, -1) if ta else a
        b_op = b.transpose(-2, -1) if tb else b
        calls = _calls_for(2.0 * nb * m * k * n)
        times = []
        for rep in range(repeats + 1):
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(calls):
                c = torch.matmul(a_op, b_op)
            torch.cuda.synchronize()
            if rep:  # the first run warms up
                times.append((time.perf_counter() - started) / calls * 1e3)
        del c
        results.append({"label": label, "torch_ms": statistics.median(times)})
    return results


def run_jittor(items, repeats):
    from jittor_impl import runtime
    from jittor_impl.runtime import jt
    runtime.use_device("cuda")
    ops = jt.compile_extern.cublas_ops
    results = []
    for label, nb, m, k, n, ta, tb, _ in items:
        sa, sb = _stored(m, k, n, ta, tb)
        a = jt.randn((nb,) + sa if nb > 1 else sa).cast("bfloat16")
        b = jt.randn((nb,) + sb if nb > 1 else sb).cast("bfloat16")
        jt.sync_all(True)
        flops = 2.0 * nb * m * k * n

        def product():
            if nb > 1:
                return ops.cublas_batched_matmul(a, b, ta, tb)
            return ops.cublas_matmul(a, b, ta, tb)

        def materialised():  # jt.matmul on a transposed view (what the issue timed)
            a_op = a.transpose(1, 0) if ta else a
            b_op = b.transpose(1, 0) if tb else b
            return jt.matmul(a_op, b_op)

        row = {"label": label}
        variants = [("jittor_ms", product)]
        if nb == 1 and (ta or tb):
            variants.append(("jittor_matmul_view_ms", materialised))
        for key, fn in variants:
            calls = _calls_for(flops) if key == "jittor_ms" else max(3, _calls_for(flops) // 10)
            times = []
            for rep in range(repeats + 1):
                jt.sync_all(True)
                started = time.perf_counter()
                for _ in range(calls):
                    c = fn()
                    c.sync()
                jt.sync_all(True)
                if rep:
                    times.append((time.perf_counter() - started) / calls * 1e3)
            row[key] = statistics.median(times)
            del c
        results.append(row)
        jt.gc()
    return results


def table(items, merged):
    lines = ["| product | batch x M x K x N | flags (a, b) | calls/step | jittor ms | torch ms | "
             "jittor/torch | jittor TFLOP/s | torch TFLOP/s | jt.matmul on a transposed view ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    total = {"jittor": 0.0, "torch": 0.0}
    for (label, nb, m, k, n, ta, tb, calls), r in zip(items, merged):
        flops = 2.0 * nb * m * k * n
        jt_ms, th_ms = r.get("jittor_ms"), r.get("torch_ms")
        total["jittor"] += (jt_ms or 0) * calls
        total["torch"] += (th_ms or 0) * calls
        fmt = lambda v: f"{v:.3f}" if v is not None else "n/a"  # noqa: E731
        tf = lambda v: f"{flops / v / 1e9:.0f}" if v else "n/a"  # noqa: E731
        lines.append(f"| {label} | {nb} x {m} x {k} x {n} | {'T' if ta else 'N'}, {'T' if tb else 'N'} | "
                     f"{calls} | {fmt(jt_ms)} | {fmt(th_ms)} | "
                     f"{(jt_ms / th_ms) if jt_ms and th_ms else float('nan'):.2f} | {tf(jt_ms)} | "
                     f"{tf(th_ms)} | {fmt(r.get('jittor_matmul_view_ms'))} |")
    lines.append(f"\nSummed over one step's calls: jittor {total['jittor']:.1f} ms, torch "
                 f"{total['torch']:.1f} ms (the attention rows are what the math path issues; the "
                 f"fused attention replaces them).")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--card", default="gpt2.md", choices=sorted(MODEL_CARDS))
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="markdown table (and .json beside it)")
    p.add_argument("--_backend", choices=["torch", "jittor"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch_size", "seq_len", "rank", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    items = products(args.card, args.batch_size, args.seq_len, args.rank)
    if args._backend:
        run = run_torch if args._backend == "torch" else run_jittor
        print(PREFIX + json.dumps(run(items, args.repeats)), flush=True)
        return 0
    merged = [dict() for _ in items]
    for backend in ("torch", "jittor"):
        cmd = [sys.executable, os.path.abspath(__file__), "--_backend", backend, "--card", args.card,
               "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len),
               "--rank", str(args.rank), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
        if not lines:
            print(f"bench_products.py: the {backend} run failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip()[-2000:]}", file=sys.stderr)
            continue
        for row, got in zip(merged, json.loads(lines[-1][len(PREFIX):])):
            row.update(got)
    text = (f"# Matrix products of one training step: {args.card}, batch {args.batch_size}, seq_len "
            f"{args.seq_len}, LoRA r={args.rank}, bf16\n\n" + table(items, merged) + "\n")
    print(text)
    if args.out:
        write_text(args.out, text)
        write_json(os.path.splitext(args.out)[0] + ".json", {"items": items, "results": merged})
    return 0 if all(r.get("jittor_ms") and r.get("torch_ms") for r in merged) else 1


if __name__ == "__main__":
    sys.exit(main())
