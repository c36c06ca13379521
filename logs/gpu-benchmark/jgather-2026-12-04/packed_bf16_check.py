"""The packed flash attention on bf16 qkv (the training step's input type, the 16-byte load path)
against float32 causal attention in numpy: output and dqkv, worst error relative to each's scale."""
import numpy as np
from jittor_impl.runtime import jt, use_device
from jittor_impl import flash_attention, precision

use_device("cuda")
b, t, h, d = 2, 512, 16, 64
rng = np.random.default_rng(0)
qkv = rng.normal(size=(b, t, 3 * h * d)).astype(np.float32)
g = rng.normal(size=(b, t, h * d)).astype(np.float32)
x = jt.array(qkv).cast("bfloat16")
with precision.autocast("bfloat16"):
    out = flash_attention.packed_flash_attention(x, h)
    dqkv = jt.grad((out.float32() * jt.array(g)).sum(), x)
out, dqkv = out.float32().numpy(), dqkv.float32().numpy()
xr = x.float32().numpy().astype(np.float64)
q, k, v = (xr[..., i * h * d:(i + 1) * h * d].reshape(b, t, h, d).transpose(0, 2, 1, 3) for i in range(3))
s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + np.triu(np.full((t, t), -np.inf), 1)
p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
o = p @ v
gh = g.astype(np.float64).reshape(b, t, h, d).transpose(0, 2, 1, 3)
dv = p.transpose(0, 1, 3, 2) @ gh
dp = gh @ v.transpose(0, 1, 3, 2)
ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(d)
dq, dk = ds @ k, ds.transpose(0, 1, 3, 2) @ q
merge = lambda a: a.transpose(0, 2, 1, 3).reshape(b, t, h * d)
want_o, want_g = merge(o), np.concatenate([merge(dq), merge(dk), merge(dv)], -1)
for name, got, want in (("out", out, want_o), ("dqkv", dqkv, want_g)):
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"{name}: max |err| / max |want| = {err:.2e} ({'ok' if err < 2e-2 else 'FAIL'})", flush=True)
