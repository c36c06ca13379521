"""The packed flash attention of jittor_impl/flash_attention.py (register-fragment mma.sync kernels)
against the wmma kernels it replaced (a copy of the earlier module beside this script, made before
the call with `git show`), on bf16 qkv as the training step gives it, on CUDA:
1. accuracy at B 2, T 512, 16 heads of 64: output and dqkv of each against float64 attention in
   numpy (worst error over the largest value), and the two kernels against each other;
2. speed at the training shape (B 8, T 512, 16 heads of 64): milliseconds per call of the forward
   alone and of forward + backward (the backward's loss (out * g).sum() included in both), timed
   around jt.sync_all(True), each kernel warmed up first.
Exits 1 when the new kernel's error is over 2e-2 (bf16 operands give ~4e-3)."""
import importlib.util
import os
import sys
import time

import numpy as np

from jittor_impl.runtime import jt, use_device
from jittor_impl import flash_attention, precision

use_device("cuda")
here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("jittor_impl.flash_attention_wmma",
                                              os.path.join(here, "wmma_flash_attention.py"))
wmma = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wmma)
KERNELS = {"wmma (before)": wmma, "mma.sync (new)": flash_attention}


def run(module, x, g, h, backward):
    with precision.autocast("bfloat16"):
        out = module.packed_flash_attention(x, h)
        if not backward:
            return out, None
        return out, jt.grad((out.float32() * g).sum(), x)


def reference(xr, g, b, t, h, d):
    q, k, v = (xr[..., i * h * d:(i + 1) * h * d].reshape(b, t, h, d).transpose(0, 2, 1, 3) for i in range(3))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + np.triu(np.full((t, t), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gh = g.reshape(b, t, h, d).transpose(0, 2, 1, 3)
    dp = gh @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(d)
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(b, t, h * d)
    return merge(p @ v), np.concatenate([merge(ds @ k), merge(ds.transpose(0, 1, 3, 2) @ q),
                                         merge(p.transpose(0, 1, 3, 2) @ gh)], -1)


def accuracy():
    b, t, h, d = 2, 512, 16, 64
    rng = np.random.default_rng(0)
    x = jt.array(rng.normal(size=(b, t, 3 * h * d)).astype(np.float32)).cast("bfloat16")
    g = rng.normal(size=(b, t, h * d)).astype(np.float32)
    want = reference(x.float32().numpy().astype(np.float64), g.astype(np.float64), b, t, h, d)
    got = {}
    for name, module in KERNELS.items():
        out, dqkv = run(module, x, jt.array(g), h, True)
        got[name] = (out.float32().numpy(), dqkv.float32().numpy())
        errs = [np.abs(a - w).max() / np.abs(w).max() for a, w in zip(got[name], want)]
        print(f"accuracy {name}: out {errs[0]:.2e}, dqkv {errs[1]:.2e} (against float64)", flush=True)
    (a, b2) = got.values()
    print("accuracy new vs before: out {:.2e}, dqkv {:.2e}".format(
        *[np.abs(u - w).max() / np.abs(w).max() for u, w in zip(a, b2)]), flush=True)
    return max(np.abs(u - w).max() / np.abs(w).max() for u, w in zip(got["mma.sync (new)"], want))


def speed(calls=40):
    b, t, h, d = 8, 512, 16, 64
    rng = np.random.default_rng(1)
    x = jt.array(rng.normal(size=(b, t, 3 * h * d)).astype(np.float32)).cast("bfloat16")
    g = jt.array(rng.normal(size=(b, t, h * d)).astype(np.float32))
    jt.sync_all(True)
    for backward in (False, True):
        for name, module in KERNELS.items():
            for _ in range(3):
                jt.sync_all(True)
                out, dqkv = run(module, x, g, h, backward)
                (dqkv if backward else out).sync()
            jt.sync_all(True)
            start = time.perf_counter()
            for _ in range(calls):
                out, dqkv = run(module, x, g, h, backward)
                (dqkv if backward else out).sync()
            jt.sync_all(True)
            ms = (time.perf_counter() - start) * 1e3 / calls
            what = "forward + backward" if backward else "forward"
            print(f"speed {what}, {name}: {ms:.3f} ms per call (B {b}, T {t}, H {h}, D {d}; x24 layers "
                  f"= {24 * ms:.1f} ms a step)", flush=True)


if __name__ == "__main__":
    err = accuracy()
    speed()
    sys.exit(0 if err < 2e-2 else 1)
