"""Jittor's float32 decoding ops at the per-row beam search's shapes (105 MRs x beam 10 = 1050
rows, one new token, 16 heads of 64, a cache of 128 positions), ops.py's exact path
(JLA fused kernels "off") against the float32 decoding kernels "auto" takes on CUDA: the
attention (decode_attention.py), the LayerNorm forward and the tanh GELU (fused_kernels.py; run
with JLA_FUSED_OPS naming decode_attention and decode_gelu, which run.sh sets).
For each: ms per call (each call synchronised, as the decoding loop is), whether three runs repeat
bit for bit, the error against float64 (numpy) of both, and a CHECK line: GELU must give the
exact path's bits; the attention and LayerNorm must repeat and be no less accurate (mean error
within 1.25x of the exact path's). run.sh leaves an op whose check failed out of the beam rows."""
import sys
import time

import numpy as np

from jittor_impl.runtime import jt, use_device
from jittor_impl import fused_kernels, ops

SMOKE = sys.argv[1:] == ["cpu"]  # a small run of this script's own logic on the CPU
use_device("cpu" if SMOKE else "cuda")
rng = np.random.default_rng(0)
N, H, S, D, C = (21 if SMOKE else 1050), 16, 128, 64, 1024


def timed(f, calls=2 if SMOKE else 100):
    for _ in range(3):
        f().sync()
    jt.sync_all(True)
    start = time.perf_counter()
    for _ in range(calls):
        f().sync()
    jt.sync_all(True)
    return (time.perf_counter() - start) * 1e3 / calls


def in_mode(mode, f):
    def run():
        fused_kernels.set_fused_kernels(mode)
        try:
            return f()
        finally:
            fused_kernels.set_fused_kernels("auto")
    return run


def compare(name, f, reference, subset, need_bits):
    out = {}
    for mode in ("off", "auto"):
        g = in_mode(mode, f)
        runs = [g().numpy() for _ in range(3)]
        repeat = all(np.array_equal(r, runs[0]) for r in runs)
        err = np.abs(runs[0][subset].astype(np.float64) - reference)
        out[mode] = (runs[0], repeat, err.mean(), err.max())
        print(f"{name} | {mode}: {timed(g):.4f} ms per call; 3 runs bit-identical {repeat}; "
              f"error vs float64 mean {err.mean():.3e} max {err.max():.3e}", flush=True)
    (exact, _, mean_x, _), (new, repeat, mean_n, _) = out["off"], out["auto"]
    same = np.array_equal(exact, new)
    ok = same if need_bits else (repeat and mean_n <= 1.25 * mean_x)
    print(f"{name}: bits equal to the exact path {same}, max |diff| {np.abs(exact - new).max():.2e}", flush=True)
    print(f"CHECK {name} {'ok' if ok else 'failed'}", flush=True)


with jt.no_grad():
    qn = rng.normal(size=(N, H, 1, D)).astype(np.float32) * 2
    kn = rng.normal(size=(N, H, S, D)).astype(np.float32)
    vn = rng.normal(size=(N, H, S, D)).astype(np.float32)
    ln_ = rng.integers(20, S + 1, size=N).astype(np.int32)
    q, k, v, len_kv = (jt.array(a) for a in (qn, kn, vn, ln_))
    sub = slice(0, 40)
    q64, k64, v64 = (a[sub].astype(np.float64) for a in (qn, kn, vn))
    s = q64 @ k64.swapaxes(-1, -2) / 8.0
    s = np.where(np.arange(S)[None, None, None, :] >= ln_[sub, None, None, None], -1e10, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    compare("decode_attention", lambda: ops.fused_attention(q, k, v, len_kv=len_kv),
            (p / p.sum(-1, keepdims=True)) @ v64, sub, need_bits=False)

    xn = rng.normal(size=(N, 1, C)).astype(np.float32)
    yn = rng.normal(size=(N, 1, C)).astype(np.float32) * 3 + 1
    wn = rng.normal(size=(C,)).astype(np.float32)
    bn = rng.normal(size=(C,)).astype(np.float32)
    x, y, w, b = (jt.array(a) for a in (xn, yn, wn, bn))
    s64 = (xn + yn).astype(np.float64)
    u = s64.mean(-1, keepdims=True)
    compare("layer_norm", lambda: ops.layer_norm(x + y, w, b, 1e-5),
            wn * (s64 - u) / np.sqrt(((s64 - u) ** 2).mean(-1, keepdims=True) + 1e-5) + bn,
            slice(None), need_bits=False)

    hn = np.concatenate([rng.normal(size=(N // 2, 1, 4 * C)) * 3,
                         rng.normal(size=(N - N // 2, 1, 4 * C)) * 30]).astype(np.float32)
    h = jt.array(hn)
    h64 = hn.astype(np.float64)
    compare("decode_gelu", lambda: ops.gelu(h),
            0.5 * h64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h64 + 0.044715 * h64 ** 3))),
            slice(None), need_bits=True)
