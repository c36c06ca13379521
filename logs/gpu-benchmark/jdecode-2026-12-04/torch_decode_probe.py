"""The torch twin's per-row decoding attention at the beam search's shapes (as decode_probe.py:
1050 rows, one new token, 16 heads of 64, a cache of 128 positions, float32): the committed path
(torch_impl/ops.py fused_attention, SDPA with a boolean mask: the memory-efficient kernel took
1.8 s of a 4.0 s batch in jmma's call C) against forms that read each key and value once at
the memory's speed (`mul_sum compiled`: the element-wise product and its sum as one kernel of
inductor's). For each: ms per call (each call synchronised), whether three runs repeat bit
for bit, and the error against float64 (numpy). It measures only: nothing in the code changes
with it. `python torch_decode_probe.py cpu` runs its own logic small on the CPU."""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from torch_impl import ops

SMOKE = sys.argv[1:] == ["cpu"]
device = "cpu" if SMOKE else "cuda"
N, H, S, D = (21 if SMOKE else 1050), 16, 128, 64
rng = np.random.default_rng(0)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def timed(f, calls=2 if SMOKE else 100):
    for _ in range(3):
        f()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        f()
        sync()
    return (time.perf_counter() - start) * 1e3 / calls


def masked_softmax(scores, len_kv):
    beyond = torch.arange(S, device=device)[None, :] >= len_kv[:, None]
    return torch.softmax(scores.masked_fill(beyond[:, None, None, :], -1e10), dim=-1)


def committed(q, k, v, len_kv):
    return ops.fused_attention(q, k, v, len_kv=len_kv)


def matmul_form(q, k, v, len_kv):
    return torch.matmul(masked_softmax(torch.matmul(q, k.transpose(-1, -2)) / 8.0, len_kv), v)


def mul_sum_form(q, k, v, len_kv):  # scores as an element-wise product summed over d
    return torch.matmul(masked_softmax((q * k).sum(-1).unsqueeze(-2) / 8.0, len_kv), v)


def math_sdpa(q, k, v, len_kv):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    keep = torch.arange(S, device=device)[None, :] < len_kv[:, None]
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])


qn = rng.normal(size=(N, H, 1, D)).astype(np.float32) * 2
kn = rng.normal(size=(N, H, S, D)).astype(np.float32)
vn = rng.normal(size=(N, H, S, D)).astype(np.float32)
ln_ = rng.integers(20, S + 1, size=N).astype(np.int64)
sub = slice(0, 40)
q64, k64, v64 = (a[sub].astype(np.float64) for a in (qn, kn, vn))
s = q64 @ k64.swapaxes(-1, -2) / 8.0
s = np.where(np.arange(S)[None, None, None, :] >= ln_[sub, None, None, None], -1e10, s)
p = np.exp(s - s.max(-1, keepdims=True))
reference = (p / p.sum(-1, keepdims=True)) @ v64

with torch.no_grad():
    q, k, v, len_kv = (torch.from_numpy(a).to(device) for a in (qn, kn, vn, ln_))
    results = {}
    forms = (("committed", committed), ("matmul", matmul_form), ("mul_sum", mul_sum_form),
             ("sdpa_math", math_sdpa),  # inductor fuses the product and its sum into one pass
             ("mul_sum compiled", torch.compile(mul_sum_form, dynamic=False)))
    for name, form in forms:
        try:
            runs = [form(q, k, v, len_kv).cpu().numpy() for _ in range(3)]
        except Exception as exc:  # a form this torch cannot run is reported, not fatal
            print(f"torch decode attention | {name}: failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        repeat = all(np.array_equal(r, runs[0]) for r in runs)
        err = np.abs(runs[0][sub].astype(np.float64) - reference)
        results[name] = runs[0]
        print(f"torch decode attention | {name}: {timed(lambda: form(q, k, v, len_kv)):.4f} ms per "
              f"call; 3 runs bit-identical {repeat}; error vs float64 mean {err.mean():.3e} "
              f"max {err.max():.3e}", flush=True)
    for name, out in results.items():
        if name != "committed" and "committed" in results:
            print(f"torch decode attention | {name}: bits equal to the committed path "
                  f"{np.array_equal(out, results['committed'])}", flush=True)
