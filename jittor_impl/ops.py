# framework: docstring lines 4-6
"""The tensor operations the Jittor model is written in (twin: torch_impl/ops.py, same names).

model.py and lora.py compute through these names, so the two twins read line for line and what
differs between the frameworks stands here, once. The products and permutes take their
mixed-precision and fast-device forms from precision.py (direct cuBLAS calls and gathers on
CUDA, blocked sums on the CPU).
"""
import math  # framework

import numpy as np  # framework

from shared.text.batching import check_token_ids  # framework

from . import decode_attention, flash_attention, fused_kernels, precision  # framework
from .runtime import jt  # framework

nn = jt.nn  # framework
ATTENTION_IMPLS = ("math", "sdpa")  # the reference's formula; the fused kernel, same function  # framework
DEFAULT_ATTENTION = "sdpa"


def parameter(*shape, value=0.0):
    """A trainable float32 tensor filled with `value` (models load their real weights after)."""
    return jt.full(shape, value)  # framework


def matmul(a, b):
    return precision.matmul(a, b)  # framework


def matmul_transpose(a, b):
    # framework: docstring lines 1-3
    """a @ b.T without a transposed copy of b (a may have leading batch dimensions, b is 2-D).
    The tied output head's product: where the fused cross-entropy takes its logits (mixed
    precision on CUDA), they stay bf16."""
    return precision.matmul_transpose(a, b, fused_kernels.wanted(a, "cross_entropy"))  # framework


def lora_padded_B(lora_B, r):
    # framework: docstring lines 2-3
    """The (2r, 3e) block matrix [[B_q^T, 0, 0], [0, 0, B_v^T]] of a (2e, r) `lora_B` (rows: query,
    value): lora.py's q/v update as one product. One gather (its backward one scatter-add), where
    slices, transposes and concats took 8 setitem and 4 transpose kernels per layer each way."""
    e = lora_B.shape[0] // 2
    return lora_B.reindex([2 * r, 3 * e], [f"i0<{r} ? i1 : i1-{e}", f"i0<{r} ? i0 : i0-{r}"],  # framework
                          overflow_value=0, overflow_conditions=[f"i0<{r} ? i1>={e} : i1<{2 * e}"])  # framework


def batched_matmul_transpose(a, b):
    """a @ b^T over matching leading (batch, head) dimensions: attention scores q k^T."""
    return precision.batched_matmul_transpose(a, b)  # framework


def permute(x, *order):
    return precision.permute(x, *order)  # framework


def split_heads(x, n_head):  # (B, T, E) -> (B, H, T, D)
    return permute(x.reshape(list(x.shape[:-1]) + [n_head, x.shape[-1] // n_head]), 0, 2, 1, 3)


def merge_heads(x):  # (B, H, T, D) -> (B, T, E)
    x = permute(x, 0, 2, 1, 3)
    return x.reshape(list(x.shape[:-2]) + [x.shape[-2] * x.shape[-1]])


_MASKS = {}  # (nd, ns, on CUDA) -> mask, built once, not in every layer  # framework


def causal_mask(nd, ns, like):
    # framework: docstring lines 2-3
    """(nd, ns) ones on and below the diagonal that ends at (nd-1, ns-1), on `like`'s device: the
    last nd rows of a causal mask over ns keys (the reference's `bias[:, :, ns-nd:ns, :ns]`).
    Cached: rebuilding it in every layer was an index kernel per layer on CUDA."""
    key = (nd, ns, bool(jt.flags.use_cuda))  # framework
    if key not in _MASKS:  # framework
        if len(_MASKS) >= 256:  # incremental decoding without a fixed cache meets many sizes  # framework
            _MASKS.clear()  # framework
        _MASKS[key] = jt.tril(jt.ones((nd, ns)), diagonal=ns - nd).stop_grad()  # framework
        _MASKS[key].sync()  # framework
    return _MASKS[key]  # framework


def fused_attention(q, k, v, len_kv=None, divisor=None):
    # framework: docstring lines 1-5
    """softmax(q k^T / divisor + causal mask) v (divisor None: sqrt(d)); with `len_kv`, keys at
    or beyond each row's length are masked too. Jittor 1.3.11 has no fused attention (its
    jittor.attention.scaled_dot_product_attention is the formula, unfused): mixed precision on
    CUDA takes flash_attention.py's kernels (no [B, H, T, T] tensor); float32 computes the
    reference's formula, as model.py's `_attn_math` (decoding on CUDA: decode_attention.py)."""
    divisor = math.sqrt(v.shape[-1]) if divisor is None else divisor  # framework
    if fused_kernels.wanted(q, "attention") and flash_attention.supported(q, k, v, len_kv):  # framework
        return flash_attention.flash_attention(q, k, v, len_kv=len_kv, scale=1.0 / divisor)  # framework
    if decode_attention.wanted(q, k, len_kv):  # float32 decoding on CUDA: one kernel  # framework
        return decode_attention.decode_attention(q, k, v, len_kv, divisor)  # framework
    w = batched_matmul_transpose(q, k)  # framework
    w = w / divisor  # framework
    nd, ns = w.shape[-2], w.shape[-1]  # framework
    b = causal_mask(nd, ns, w)  # framework
    w = w * b - 1e10 * (1 - b)  # framework
    if len_kv is not None:
        beyond = jt.arange(ns).reshape(1, ns) >= len_kv.reshape(-1, 1)  # framework
        w = w.masked_fill(beyond.reshape(-1, 1, 1, ns), -1.0e10)  # framework
    w = softmax(w, dim=-1)  # framework
    return matmul(w, v)  # framework


def qkv_attention(qkv, n_head, divisor=None):
    # framework: docstring lines 2-4
    """Causal self-attention of the fused projection's (B, T, 3E) output = [q | k | v], heads
    merged back: (B, T, E). Mixed precision on CUDA: one kernel each way that reads q, k, v in
    place and writes merged heads (flash_attention.packed_flash_attention), so the split and the
    head permutes are no copies; otherwise the split heads through fused_attention."""
    if fused_kernels.wanted(qkv, "attention") and flash_attention.packed_supported(qkv, n_head):  # framework
        return flash_attention.packed_flash_attention(qkv, n_head, scale=None if divisor is None else 1.0 / divisor)  # framework
    q, k, v = (split_heads(t, n_head) for t in qkv.split(qkv.shape[-1] // 3, dim=2))
    return merge_heads(fused_attention(q, k, v, divisor=divisor))


def mixed_precision(x):
    # framework: docstring line 1
    """Whether the products run in a 16-bit type (inside precision.autocast): where forms that
    round differently from the float32 path may be taken."""
    return precision.compute_dtype() is not None  # framework


def layer_norm(x, weight, bias, eps):
    # framework: docstring lines 1-2
    """Two-pass variance, as torch: Jittor's nn.LayerNorm takes E[x^2] - E[x]^2, losing digits.
    Mixed precision on CUDA takes one fused kernel per pass (fused_kernels.py)."""
    if fused_kernels.layer_norm_wanted(x):  # framework
        return fused_kernels.layer_norm(x, weight, bias, eps)  # framework
    u = x.mean(-1, keepdims=True)  # framework
    s = ((x - u) * (x - u)).mean(-1, keepdims=True)  # framework
    return weight * ((x - u) / jt.sqrt(s + eps)) + bias  # framework


def embedding(weight, ids):
    # framework: docstring lines 1-3
    """Rows of `weight`. Indexing a Jittor Var past its end returns garbage instead of failing,
    so ids known on the host (numpy) are checked here; positions are checked from shapes in
    GPT2Model, and training batches in shared code before they reach the device."""
    if isinstance(ids, np.ndarray):  # framework
        check_token_ids(ids, weight.shape[0])  # framework
        ids = jt.array(ids)  # framework
    return weight[ids]  # framework


def dropout(x, p):
    # framework: docstring lines 1-3
    """`nn.dropout(x, p, is_train=True)` with the same draws and arithmetic, but the kept mask
    multiplied in as booleans rather than cast to int32 first (Jittor's int32 mask kernel took
    9 ms of a gpt2.md training step on an H100)."""
    return x * (jt.random(x.shape) > p) / (1.0 - p)  # framework


def gelu(x):
    # framework: docstring lines 1-5
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); Jittor fuses these into one kernel.
    The tanh argument is clamped to +-20, where float32 tanh is already +-1 (no value changes):
    Jittor 1.3.11's tanh backward is NaN for arguments beyond about +-45 on the CPU (found by
    scripts/diff_layers.py, logs/diff-layers-cpu), where the true gradient is 0.
    Mixed precision on CUDA takes one fused kernel per pass (fused_kernels.py)."""
    if fused_kernels.gelu_wanted(x):  # framework
        return fused_kernels.gelu(x)  # framework
    z = math.sqrt(2.0 / math.pi) * (x + 0.044715 * jt.pow(x, 3))  # framework
    return 0.5 * x * (1.0 + jt.tanh(jt.clamp(z, -20.0, 20.0)))  # framework


def softmax(x, dim=-1):
    """Mixed precision on CUDA: one fused kernel per pass, probabilities stored in bf16."""  # framework
    if fused_kernels.softmax_wanted(x, dim):  # framework
        return fused_kernels.softmax(x)  # framework
    return nn.softmax(x, dim=dim)  # framework


def cross_entropy(logits, labels, smoothing):
    # framework: docstring lines 2-8
    """Per-row losses of (N, V) `logits`, label-smoothed as the reference does, 0 where the
    label is -1. Jittor's cross_entropy_loss has no label smoothing, so the reference's form is
    written out: the log-sum-exp of the shifted logits, the shift held constant and the
    vocabulary sums in float64 (Jittor's CPU reductions add one term after another in the input
    type, which over 50257 words loses digits). With logprobs = shifted - lse the token loss is
    lse - shifted[label] and the smoothing term -mean(logprobs) is lse - mean(shifted), so no
    vocabulary-wide reduction appears in the backward pass (Jittor's log_softmax differentiates
    through its max shift, where fp32 leaves a residue)."""
    if fused_kernels.wanted(logits, "cross_entropy"):  # mixed precision on CUDA: one kernel each way  # framework
        return fused_kernels.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), smoothing)  # framework
    flat = logits.float32()  # framework
    shifted = flat - flat.max(dim=-1, keepdims=True).stop_grad()  # framework
    lse = shifted.exp().float64().sum(dim=-1).log().float32()  # framework
    loss = lse - shifted.gather(1, labels.maximum(0).reshape(-1, 1)).reshape(-1)  # framework
    if smoothing > 0:  # framework
        smooth = lse - shifted.float64().mean(dim=-1).float32()  # framework
        loss = (1.0 - smoothing) * loss + smoothing * smooth  # framework
    return jt.where(labels == -1, jt.zeros_like(loss), loss)  # framework
