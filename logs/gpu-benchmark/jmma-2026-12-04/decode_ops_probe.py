"""Jittor's float32 ops at the per-row beam search's decode shapes (105 MRs x beam 10 = 1050 rows,
one token): LayerNorm's two mean reductions and the tanh GELU as ops.py writes them, on the
model's 3-D tensors and on the same data viewed 2-D. For each: milliseconds per call (each call
synchronised, as the decoding loop is), whether five runs give the same bits (Jittor reduces with
atomic adds on CUDA), and whether the 2-D view gives the 3-D result's bits."""
import time

import numpy as np

from jittor_impl.runtime import jt, use_device
from jittor_impl import ops

use_device("cuda" if __import__("sys").argv[1:] != ["cpu"] else "cpu")
rng = np.random.default_rng(0)
x = jt.array(rng.normal(size=(1050, 1, 1024)).astype(np.float32))
y = jt.array(rng.normal(size=(1050, 1, 1024)).astype(np.float32))
h = jt.array(rng.normal(size=(1050, 1, 4096)).astype(np.float32))
w = jt.array(rng.normal(size=(1024,)).astype(np.float32))
b = jt.array(rng.normal(size=(1024,)).astype(np.float32))
flat = lambda t: t.reshape(t.shape[0], t.shape[-1])
CASES = {
    "mean of x + y, 3-D": lambda: (x + y).mean(-1, keepdims=True),
    "mean of x + y, 2-D": lambda: flat(x + y).mean(-1, keepdims=True).reshape(1050, 1, 1),
    "layer_norm(x + y), 3-D": lambda: ops.layer_norm(x + y, w, b, 1e-5),
    "layer_norm(x + y), 2-D": lambda: ops.layer_norm(flat(x + y), w, b, 1e-5).reshape(1050, 1, 1024),
    "gelu(h), 3-D": lambda: ops.gelu(h),
    "gelu(h), 2-D": lambda: ops.gelu(flat(h)).reshape(1050, 1, 4096),
}
results = {}
for name, f in CASES.items():
    runs = [f().numpy() for _ in range(5)]
    same = all(np.array_equal(r, runs[0]) for r in runs)
    for _ in range(5):
        f().sync()
    jt.sync_all(True)
    start = time.perf_counter()
    for _ in range(200):
        f().sync()
    jt.sync_all(True)
    ms = (time.perf_counter() - start) * 1e3 / 200
    results[name] = runs[0]
    print(f"{name}: {ms:.3f} ms per call; five runs bit-identical: {same}", flush=True)
for name in CASES:
    if name.endswith("2-D"):
        twin = name.replace("2-D", "3-D")
        diff = np.abs(results[name] - results[twin]).max()
        print(f"{name} vs 3-D: bit-identical {np.array_equal(results[name], results[twin])}, max |diff| {diff:.2e}")
