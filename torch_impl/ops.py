# framework: docstring lines 4-5
"""The tensor operations the PyTorch model is written in (twin: jittor_impl/ops.py, same names).

model.py and lora.py compute through these names, so the two twins read line for line and what
differs between the frameworks stands here, once. In PyTorch most are one call; the Jittor twin
sends its products and permutes through its mixed-precision and fast-device paths.
"""
import torch  # framework
import torch.nn.functional as F  # framework
from torch import nn  # framework

from .cross_entropy import low_precision_cross_entropy  # framework

ATTENTION_IMPLS = ("math", "sdpa")  # the reference's formula; torch's fused kernel, same function  # framework
DEFAULT_ATTENTION = "sdpa"


def parameter(*shape, value=0.0):
    """A trainable float32 tensor filled with `value` (models load their real weights after)."""
    return nn.Parameter(torch.full(shape, value))  # framework


def matmul(a, b):
    return torch.matmul(a, b)  # framework


def matmul_transpose(a, b):
    """a @ b.T without a transposed copy of b (a may have leading batch dimensions, b is 2-D)."""  # framework
    return F.linear(a, b)  # framework


def lora_padded_B(lora_B, r):
    # framework: docstring line 2
    """The (2r, 3e) block matrix [[B_q^T, 0, 0], [0, 0, B_v^T]] of a (2e, r) `lora_B` (rows: query,
    value): lora.py's q/v update as one product."""
    e = lora_B.shape[0] // 2
    b_q, b_v = lora_B[:e].transpose(0, 1), lora_B[e:].transpose(0, 1)  # (r, e) each  # framework
    zeros = torch.zeros_like(b_q)  # framework
    return torch.concat([torch.concat([b_q, zeros, zeros], dim=1), torch.concat([zeros, zeros, b_v], dim=1)], dim=0)  # framework


def batched_matmul_transpose(a, b):
    """a @ b^T over matching leading (batch, head) dimensions: attention scores q k^T."""
    return torch.matmul(a, b.transpose(-2, -1))  # framework


def permute(x, *order):
    return x.permute(*order)  # framework


def split_heads(x, n_head):  # (B, T, E) -> (B, H, T, D)
    return permute(x.reshape(list(x.shape[:-1]) + [n_head, x.shape[-1] // n_head]), 0, 2, 1, 3)


def merge_heads(x):  # (B, H, T, D) -> (B, T, E)
    x = permute(x, 0, 2, 1, 3)
    return x.reshape(list(x.shape[:-2]) + [x.shape[-2] * x.shape[-1]])


def causal_mask(nd, ns, like):
    # framework: docstring line 2
    """(nd, ns) ones on and below the diagonal that ends at (nd-1, ns-1), on `like`'s device: the
    last nd rows of a causal mask over ns keys (the reference's `bias[:, :, ns-nd:ns, :ns]`)."""
    return torch.ones(nd, ns, device=like.device).tril(diagonal=ns - nd)  # framework


def fused_attention(q, k, v, len_kv=None, divisor=None):
    # framework: docstring lines 1-2
    """softmax(q k^T / divisor + causal mask) v as one fused kernel (divisor None: sqrt(d)); with
    `len_kv`, keys at or beyond each row's length are masked too."""
    scale = None if divisor is None else 1.0 / divisor  # framework
    nd, ns = q.shape[-2], k.shape[-2]  # framework
    if len_kv is None and nd == ns:  # framework
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)  # framework
    keep = causal_mask(nd, ns, q).bool()  # framework
    if len_kv is not None:
        keep = keep & (torch.arange(ns, device=k.device)[None, :] < len_kv[:, None])[:, None, None, :]  # framework
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)  # framework


def qkv_attention(qkv, n_head, divisor=None):
    # framework: docstring line 2
    """Causal self-attention of the fused projection's (B, T, 3E) output = [q | k | v], heads
    merged back: (B, T, E)."""
    q, k, v = (split_heads(t, n_head) for t in qkv.split(qkv.shape[-1] // 3, dim=2))
    return merge_heads(fused_attention(q, k, v, divisor=divisor))


def mixed_precision(x):
    # framework: docstring line 1
    """Whether the products run in a 16-bit type (inside torch.autocast): where forms that
    round differently from the float32 path may be taken."""
    return torch.is_autocast_enabled(x.device.type)  # framework


def layer_norm(x, weight, bias, eps):
    return F.layer_norm(x, weight.shape, weight, bias, eps)  # framework


def embedding(weight, ids):
    return F.embedding(ids, weight)  # framework


def dropout(x, p):
    """Inverted dropout in training mode: keep with probability 1 - p, scale by 1 / (1 - p)."""  # framework
    return F.dropout(x, p, training=True)  # framework


def gelu(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as one fused kernel."""  # framework
    return F.gelu(x, approximate="tanh")  # framework


def softmax(x, dim=-1):
    return torch.softmax(x, dim=dim)  # framework


def cross_entropy(logits, labels, smoothing):
    # framework: docstring lines 2-3
    """Per-row losses of (N, V) `logits`, label-smoothed as the reference does, 0 where the
    label is -1: torch's own kernel; bf16/fp16 logits take the blocked kernel of
    cross_entropy.py, which never makes a float32 copy of them."""
    if logits.dtype in (torch.bfloat16, torch.float16):  # framework
        return low_precision_cross_entropy(logits, labels, smoothing)  # framework
    return F.cross_entropy(logits, labels, ignore_index=-1, reduction="none", label_smoothing=smoothing)  # framework
