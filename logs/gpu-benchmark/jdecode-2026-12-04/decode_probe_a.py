"""Jittor's float32 decoding ops at the per-row beam search's shapes (105 MRs x beam 10 = 1050
rows, one new token, 16 heads of 64, a cache of 128 positions), each against a candidate:
- the attention scores q k^T: cuBLAS with k read transposed (as precision.py calls it) against
  k q^T (the same dot products, the operands in the other order, its [.., 128, 1] result a view);
- the probabilities times v: p v against (v^T p^T)^T, likewise;
- LayerNorm of a residual sum: ops.py's reductions against fused_kernels' one-kernel forward;
- tanh GELU: ops.py's ops against fused_kernels' exact-form kernel and its mixed-precision one.
For each: ms per call (each call synchronised, as the decoding loop is), bit-identity with the
current form, and the largest error against float64 (numpy) of both."""
import time

import numpy as np

from jittor_impl.runtime import jt, use_device
from jittor_impl import fused_kernels, ops

use_device("cuda")
rng = np.random.default_rng(0)
N, H, S, D, C = 1050, 16, 128, 64, 1024
cublas = jt.compile_extern.cublas_ops


def timed(f, calls=200):
    for _ in range(5):
        f().sync()
    jt.sync_all(True)
    start = time.perf_counter()
    for _ in range(calls):
        f().sync()
    jt.sync_all(True)
    return (time.perf_counter() - start) * 1e3 / calls


def compare(name, forms, reference, subset=slice(None)):
    """forms: {label: callable}; the first is the current form."""
    outs, first = {}, None
    for label, f in forms.items():
        runs = [f().numpy() for _ in range(3)]
        repeat = all(np.array_equal(r, runs[0]) for r in runs)
        out = runs[0]
        outs[label] = out
        err = np.abs(out[subset].astype(np.float64) - reference).max()
        same = "" if first is None else f"; bits equal to {first}: {np.array_equal(out, outs[first])}, max |diff| {np.abs(out - outs[first]).max():.2e}"
        print(f"{name} | {label}: {timed(f):.4f} ms per call; 3 runs bit-identical {repeat}; "
              f"max |error| vs float64 {err:.3e}{same}", flush=True)
        first = first or label
    return outs


with jt.no_grad():
    qn = rng.normal(size=(N, H, 1, D)).astype(np.float32)
    kn = rng.normal(size=(N, H, S, D)).astype(np.float32)
    vn = rng.normal(size=(N, H, S, D)).astype(np.float32)
    pn = rng.random(size=(N, H, 1, S)).astype(np.float32)
    q, k, v, p = (jt.array(a) for a in (qn, kn, vn, pn))
    sub = slice(0, 40)
    compare("scores q k^T", {
        "cublas(q, k, N, T)": lambda: cublas.cublas_batched_matmul(q, k, False, True),
        "cublas(k, q, N, T) viewed": lambda: cublas.cublas_batched_matmul(k, q, False, True).reshape(N, H, 1, S),
    }, np.einsum("nhqd,nhsd->nhqs", qn[sub].astype(np.float64), kn[sub].astype(np.float64)), sub)
    compare("p v", {
        "jt.matmul(p, v)": lambda: jt.matmul(p, v),
        "cublas(p, v, N, N)": lambda: cublas.cublas_batched_matmul(p, v, False, False),
        "cublas(v, p, T, T) viewed": lambda: cublas.cublas_batched_matmul(v, p, True, True).reshape(N, H, 1, D),
    }, np.einsum("nhqs,nhsd->nhqd", pn[sub].astype(np.float64), vn[sub].astype(np.float64)), sub)

    xn = rng.normal(size=(N, 1, C)).astype(np.float32)
    yn = rng.normal(size=(N, 1, C)).astype(np.float32) * 3 + 1
    wn = rng.normal(size=(C,)).astype(np.float32)
    bn = rng.normal(size=(C,)).astype(np.float32)
    x, y, w, b = (jt.array(a) for a in (xn, yn, wn, bn))
    s64 = (xn + yn).astype(np.float64)  # the float32 sum, as both forms see it
    u = s64.mean(-1, keepdims=True)
    ref = wn * (s64 - u) / np.sqrt(((s64 - u) ** 2).mean(-1, keepdims=True) + 1e-5) + bn
    compare("layer_norm(x + y)", {
        "ops.layer_norm": lambda: ops.layer_norm(x + y, w, b, 1e-5),
        "fused_kernels.layer_norm": lambda: fused_kernels.layer_norm(x + y, w, b, 1e-5),
    }, ref)

    hn = np.concatenate([rng.normal(size=(N // 2, 1, 4 * C)) * 3,
                         rng.normal(size=(N - N // 2, 1, 4 * C)) * 30]).astype(np.float32)
    h = jt.array(hn)
    h64 = hn.astype(np.float64)
    gref = 0.5 * h64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (h64 + 0.044715 * h64 ** 3)))

    def gelu_ops():
        fused_kernels.set_fused_kernels("off")
        try:
            return ops.gelu(h)
        finally:
            fused_kernels.set_fused_kernels("auto")

    compare("gelu", {
        "ops.gelu's ops": gelu_ops,
        "exact-form kernel": lambda: fused_kernels._gelu_forward_exact(h),
        "mixed-precision kernel": lambda: fused_kernels._gelu_forward(h, "float32"),
    }, gref)
