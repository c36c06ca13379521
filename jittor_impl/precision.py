"""Mixed precision for the Jittor backend: torch.autocast's rule for matrix products, by hand.

Jittor 1.3.11 has no autocast. Inside `autocast("bfloat16")` the model's matrix products cast
both operands to bfloat16 (cuBLAS tensor cores, float32 accumulation), and everything else --
LayerNorm, softmax, the loss, the residual stream, the master weights and their gradients --
stays float32, because a bfloat16 product plus a float32 bias promotes back to float32. That is
what `torch.autocast` does for these ops, so the two backends compute comparable functions at
mixed precision (compared in alignment/test_mixed_precision.py with tolerances that fit bf16).

The model's products and head permutes all pass through here, so this is also where they take
their fast form for the device: direct cuBLAS calls and gathers on CUDA, plain products with a
blocked vocabulary sum on the CPU.
"""
import contextlib

from .runtime import jt

_compute_dtype = [None]  # None: float32 throughout


@contextlib.contextmanager
def autocast(dtype=None):
    """`dtype` is "bfloat16" or None (no-op); the jittor backend has no fp16 (no loss scaling)."""
    previous = _compute_dtype[0]
    _compute_dtype[0] = dtype
    try:
        yield
    finally:
        _compute_dtype[0] = previous


def compute_dtype():
    """The products' dtype inside `autocast` ("bfloat16"), None outside (float32 throughout)."""
    return _compute_dtype[0]


def _cast(*tensors):
    dtype = _compute_dtype[0]
    return tensors if dtype is None else tuple(t.cast(dtype) for t in tensors)


def _float32(product):
    """Low-precision products come back as float32. Besides matching what the next op (bias,
    mask, LayerNorm) promotes to anyway, this keeps the backward pass consistent: the gradient
    reaching a bf16 product is cast back to bf16 by this op's own backward, and cuBLAS's batched
    kernel refuses mixed bf16/fp32 operands."""
    return product if _compute_dtype[0] is None else product.float32()


_fast_cuda_paths = [True]


def set_fast_cuda_paths(enabled: bool):
    """On CUDA, route products through direct cuBLAS calls and permutes through gathers (the
    default), or leave both to Jittor's own ops (switchable so the benchmark can measure it)."""
    _fast_cuda_paths[0] = bool(enabled)


def _fast_cuda():
    return _fast_cuda_paths[0] and jt.flags.use_cuda


def _cublas_ops():
    return getattr(jt.compile_extern, "cublas_ops", None) if _fast_cuda() else None


class _CublasProduct(jt.Function):
    """a @ b (or a @ b.T with `transpose_b`) for 2-D a, b: one cuBLAS GEMM per product in the
    forward and in the backward pass. Jittor writes a 2-D matmul as broadcast-multiply-sum and
    relies on a fusion pass to recognise that pattern and call cuBLAS instead; calling cuBLAS
    here makes every weight product a GEMM whatever the fusion does. Gradients of frozen
    operands are returned too but, Jittor being lazy, never computed."""

    def __init__(self, ops, transpose_b=False, b_needs_grad=True):
        self.ops, self.transpose_b, self.b_needs_grad = ops, transpose_b, b_needs_grad

    def execute(self, a, b):
        # a is kept for the backward only when b trains: a frozen weight's product (all but the
        # LoRA ones in LoRA training) would otherwise hold its input activation until the backward
        self.a, self.b, self.dtype = (a if self.b_needs_grad else None), b, a.dtype
        return self.ops.cublas_matmul(a, b, False, self.transpose_b)

    def grad(self, grad_output):
        g, mm = grad_output.cast(self.dtype), self.ops.cublas_matmul
        if self.transpose_b:  # c = a b^T: da = g b, db = g^T a
            return mm(g, self.b, False, False), (mm(g, self.a, True, False) if self.a is not None else None)
        da = mm(g, self.b, False, True)  # da = g b^T, db = a^T g
        return da, (mm(self.a, g, True, False) if self.a is not None else None)


def _rows_product(a, b, product):
    """`product(a2, b)` for a (..., k) with its leading dimensions folded into the rows of a2."""
    out = product(a.reshape(-1, a.shape[-1]), b)
    return out.reshape(list(a.shape[:-1]) + [out.shape[-1]])


def _product_2d_weight(a, b, transpose_b, ops, b_needs_grad=True):
    """a (..., k) times a 2-D b (or b.T), through cuBLAS."""
    return _rows_product(a, b, _CublasProduct(ops, transpose_b, b_needs_grad))


def _trains(b):
    """False for a frozen parameter (asked before the cast: Jittor reports every op's output as
    requiring a gradient)."""
    return bool(b.requires_grad)


def matmul(a, b):
    b_needs_grad = _trains(b)
    a, b = _cast(a, b)
    ops = _cublas_ops()
    if ops is not None and b.ndim == 2 and a.ndim >= 2:
        return _float32(_product_2d_weight(a, b, False, ops, b_needs_grad))
    return _float32(jt.matmul(a, b))


def batched_matmul_transpose(a, b):
    """a @ b^T over matching leading (batch, head) dimensions: attention scores q k^T. On CUDA
    one batched cuBLAS call with b read transposed, so no transposed copy of b is made."""
    a, b = _cast(a, b)
    ops = _cublas_ops()
    if ops is not None:
        return _float32(ops.cublas_batched_matmul(a, b, False, True))
    return _float32(jt.matmul(a, b.transpose(-2, -1)))


def _gather_permute(x, order):
    """x.permute(order) written as a gather: output index i_k reads input dimension order[k]."""
    return x.reindex([x.shape[d] for d in order], [f"i{order.index(d)}" for d in range(x.ndim)])


class _Permute(jt.Function):
    """x.permute(order) as a gather in both passes. Jittor's transpose kernel without the cuTT
    library (left out: it is downloaded at import) is slow on the GPU (logs/gpu-benchmark has
    the profiles); a gather is an element-wise kernel Jittor can fuse."""

    def __init__(self, order):
        self.order = list(order)

    def execute(self, x):
        return _gather_permute(x, self.order)

    def grad(self, grad_output):
        return _gather_permute(grad_output, [self.order.index(d) for d in range(len(self.order))])


def permute(x, *order):
    moved = [d for d in order if x.shape[d] != 1]
    if moved == sorted(moved):  # only axes of size 1 move (heads of one decoded token): a reshape
        return x.reshape([x.shape[d] for d in order])
    if _fast_cuda():
        return _Permute(order)(x)
    return x.permute(*order)


def _blocked_matmul(a, b, block=1024):
    """a @ b for a long inner dimension (the 50257-word vocabulary): partial products over
    blocks of `block`, then their sum. Jittor's CPU kernels add the inner dimension one term
    after another, which over 50257 terms costs ~1e-5 relative error (10x torch's); in blocks
    the error matches torch's, and it runs faster too."""
    n, inner = a.shape
    groups = -(-inner // block)
    pad = groups * block - inner
    a = jt.concat([a, jt.zeros((n, pad), dtype=a.dtype)], 1).reshape(n, groups, block).permute(1, 0, 2)
    b = jt.concat([b, jt.zeros((pad, b.shape[1]), dtype=b.dtype)], 0).reshape(groups, block, b.shape[1])
    return jt.matmul(a, b).sum(0)


class _ProductWithTransposeCPU(jt.Function):
    """a @ b.T for 2-D a, b with both passes written as plain products. Without oneDNN, Jittor's
    CPU kernels for `nn.matmul_transpose`'s broadcast-reduce form (and for what autodiff derives
    from `a @ b.transpose()`) are several times slower than these for the tied output head."""

    def execute(self, a, b):
        self.a, self.b = a, b
        return jt.matmul(a, b.transpose(0, 1))

    def grad(self, grad_output):
        return _blocked_matmul(grad_output, self.b), jt.matmul(grad_output.transpose(0, 1), self.a)


def matmul_transpose(a, b, low_precision_out=False):
    """a @ b.T without materialising b.T (a may have leading batch dimensions, b is 2-D). With
    `low_precision_out` a mixed-precision product on CUDA stays in the compute type (the tied
    output head, whose bf16 logits the fused cross-entropy reads: torch's autocast head returns
    bf16 too) instead of coming back as float32."""
    b_needs_grad = _trains(b)
    a, b = _cast(a, b)
    ops = _cublas_ops()
    if ops is not None:
        product = _product_2d_weight(a, b, True, ops, b_needs_grad)
        return product if low_precision_out else _float32(product)
    if jt.flags.use_cuda:  # Jittor's own broadcast-multiply-sum, left to its fusion pass
        return _float32(jt.nn.matmul_transpose(a, b))
    return _float32(_rows_product(a, b, _ProductWithTransposeCPU()))
