"""Hand-written fused kernels for the Jittor twin: tanh GELU and LayerNorm, each pass one kernel.

Jittor 1.3.11 compiles these ops from their element operations, and on an H100 the results were
far from the memory traffic they need (logs/gpu-benchmark/jittor-profile-before: GELU's backward
9.2 ms per gpt2.md step, ten times its traffic; LayerNorm's mean/variance kernels about 18 ms).
Jittor has no fused kernel for either, so they are written here with `jt.code` (a CUDA source
and a CPU source each) and given their backward through `jt.Function`. All arithmetic is float32
whatever the storage type; outputs keep the input's type.

The attention softmax gets the same treatment: inside autocast it stores its probabilities in
bf16, the type the next product casts them to anyway, so no float32 copy of the [B,H,T,T]
scores' probabilities or of their gradient is made.

When they are used (`set_fused_kernels` or the environment variable JLA_FUSED_KERNELS):
- "auto": on CUDA, for bf16/fp16 inputs and inside `precision.autocast` (the
  mixed-precision step, whose tolerances they are tested within). In float32 only two kinds:
  a kernel whose result is the exact path's bit for bit (row_gather.py's copy; the decoding
  GELU), and, where no gradient is wanted (decoding), kernels that do ops.py's float32
  arithmetic with only the order of a sum's terms changed (the LayerNorm forward; the attention
  of decode_attention.py), an order Jittor's own CUDA reductions (atomic adds) and cuBLAS do not
  fix either; they must be no less accurate against float64 and repeat bit for bit (GPU tests).
  Float32 training stays exactly as ops.py writes it.
- "on": always, on any device and type (the CPU tests compare them with the exact path so).
- "off": never.
JLA_FUSED_OPS (default: all of OPS) names the ops that take part, so one kernel can be left out
(or measured alone) without touching the others.
"""
import math
import os

from . import precision
from .runtime import jt

MODES = ("auto", "on", "off")
# Default "auto": the CUDA kernels pass their GPU tests and the mixed-precision alignment tests on
# an H100 (logs/gpu-benchmark/jittor-fused/).
_mode = [os.environ.get("JLA_FUSED_KERNELS", "auto")]
if _mode[0] not in MODES:
    raise ValueError(f"JLA_FUSED_KERNELS must be one of {MODES}, got {_mode[0]!r}")

OPS = ("gelu", "layer_norm", "softmax", "attention", "cross_entropy", "optimizer", "gather",
       "decode_attention", "decode_gelu")  # attention: flash_attention.py; optimizer: fused_optim.py;
# gather: row_gather.py; decode_attention: decode_attention.py; decode_gelu: the float32 decoding GELU
_ops = set(filter(None, os.environ.get("JLA_FUSED_OPS", ",".join(OPS)).split(",")))
if not _ops <= set(OPS):
    raise ValueError(f"JLA_FUSED_OPS names unknown ops {sorted(_ops - set(OPS))}; known: {OPS}")
_LOW_PRECISION = ("bfloat16", "float16")


def set_fused_kernels(mode: str):
    if mode not in MODES:
        raise ValueError(f"fused kernel mode must be one of {MODES}, got {mode!r}")
    _mode[0] = mode


def fused_kernels_mode() -> str:
    return _mode[0]


def wanted(x, op, exact=False) -> bool:
    """Whether ops.py should take the fused kernel of `op` for input `x` (module docstring);
    `exact`: the kernel's result is the exact path's bit for bit (a copy), so "auto" takes it on
    CUDA whatever the precision, the fp32 path included."""
    if op not in _ops:
        return False
    if _mode[0] != "auto":
        return _mode[0] == "on"
    low = str(x.dtype) in _LOW_PRECISION or precision.compute_dtype() is not None
    return bool(jt.flags.use_cuda) and (exact or low)


_THREADS = 256
_GELU_K = repr(math.sqrt(2.0 / math.pi))
_GELU_C = "0.044715f"
# The tanh argument, clamped to +-20 as ops.gelu does (float32 tanh is +-1 there already).
_GELU_Z = f"float z = {_GELU_K}f * (v + {_GELU_C} * v * v * v); z = fminf(fmaxf(z, -20.f), 20.f);"
_GELU_Y = "0.5f * v * (1.f + t)"
_GELU_DY = f"0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * {_GELU_K}f * (1.f + 3.f * {_GELU_C} * v * v)"
_HEADER = "#include <cmath>\n#include <type/fp16_compute.h>\n"


def _elementwise_cuda(name, body, grad_input=False):
    """A grid-stride CUDA kernel over in0's elements; `body` sets y[i] from v = x[i] (and, with
    `grad_input`, the gradient g = in1; without it g is the output's pointer, unused)."""
    g_type, g_ptr = ("in1_type", "in1_p") if grad_input else ("out0_type", "out0_p")
    return f"""
__global__ void {name}(in0_type* __restrict__ x, {g_type}* __restrict__ g, out0_type* __restrict__ y, size_t n) {{
    size_t stride = (size_t)blockDim.x * gridDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {{
        float v = float(x[i]);
        {body}
    }}
}}
size_t n = in0->numel();
int blocks = (int)((n + {_THREADS} - 1) / {_THREADS});
if (blocks > 65536) blocks = 65536;
if (n) {name}<<<blocks, {_THREADS}>>>(in0_p, {g_ptr}, out0_p, n);
"""


def _elementwise_cpu(body):
    return f"""
size_t n = in0->numel();
for (size_t i = 0; i < n; i++) {{
    float v = float(in0_p[i]);
    {body}
}}
"""


def _gelu_forward(x, out_type):
    body = f"{_GELU_Z} float t = tanhf(z); y[i] = out0_type({_GELU_Y});"
    cuda = _elementwise_cuda("jla_gelu_fwd", body)
    cpu = _elementwise_cpu(body.replace("y[i]", "out0_p[i]").replace("tanhf", "std::tanh")
                           .replace("fminf", "std::fmin").replace("fmaxf", "std::fmax"))
    return jt.code(x.shape, out_type, [x], cpu_header=_HEADER, cpu_src=cpu,
                   cuda_header=_HEADER, cuda_src=cuda)


def _gelu_backward(x, grad, out_type=None):
    body = f"{_GELU_Z} float t = tanhf(z); y[i] = out0_type(float(g[i]) * ({_GELU_DY}));"
    cuda = _elementwise_cuda("jla_gelu_bwd", body, grad_input=True)
    cpu = _elementwise_cpu(body.replace("y[i]", "out0_p[i]").replace("g[i]", "in1_p[i]")
                           .replace("tanhf", "std::tanh").replace("fminf", "std::fmin")
                           .replace("fmaxf", "std::fmax"))
    return jt.code(x.shape, out_type or x.dtype, [x, grad], cpu_header=_HEADER, cpu_src=cpu,
                   cuda_header=_HEADER, cuda_src=cuda)


class _Gelu(jt.Function):
    """Tanh GELU: one kernel forward, one backward (reads x and the output's gradient). Inside
    autocast the output is stored in the products' type: its one consumer, the MLP's second
    product, casts it so anyway (the same values, without a float32 copy and a cast kernel; torch's
    autocast GELU, fed a bf16 product, returns bf16 too). So is the gradient of x: x is the first
    product's output plus its bias, and that product's backward casts the gradient to its type
    anyway (the same rounding, without a float32 [rows, 4C] tensor and a cast kernel per layer)."""

    def execute(self, x):
        self.x, self.low = x, precision.compute_dtype()
        return _gelu_forward(x, self.low or x.dtype)

    def grad(self, grad_output):
        return _gelu_backward(self.x, grad_output, self.low)


# ops.gelu's float32 arithmetic, op for op as Jittor's fused kernel of those ops computes it:
# x^3 as pow(float, int) (on the CPU Jittor's std::pow(float, int) is a double, and so are the
# terms it feeds until the clamp), 0.5 x taken before (1 + tanh). Compiled with Jittor's own flags
# it is to give that kernel's result bit for bit (the CPU test shows it on the CPU; the GPU test
# is to show it on CUDA before "decode_gelu" joins the default ops). Its use: float32 decoding,
# where Jittor's kernel of these ops took 0.07 ms a call at the beam's decode shape on an H200
# and torch's GELU 0.007 ms (logs/gpu-benchmark/jmma-2026-12-04, call C's profile).
_GELU_EXACT_CUDA = (f"float z = {_GELU_K}f * (v + {_GELU_C} * ::pow(v, 3)); "
                    "z = ::min(::max(z, float32(-20.0)), float32(20.0)); "
                    "y[i] = out0_type((0.5f * v) * (1.f + ::tanhf(z)));")
_GELU_EXACT_CPU = (f"auto z = {_GELU_K}f * (v + {_GELU_C} * std::pow(v, 3)); "
                   "float c = std::min(std::max(float32(z), float32(-20.0)), float32(20.0)); "
                   "out0_p[i] = out0_type((0.5f * v) * (1.f + (float32) std::tanh(c)));")


def _gelu_forward_exact(x):
    return jt.code(x.shape, x.dtype, [x], cpu_header=_HEADER, cpu_src=_elementwise_cpu(_GELU_EXACT_CPU),
                   cuda_header=_HEADER, cuda_src=_elementwise_cuda("jla_gelu_exact", _GELU_EXACT_CUDA))


def decoding_float32(x) -> bool:
    """float32 with no gradient wanted (decoding, under `jt.no_grad()`): where a forward-only
    kernel of ops.py's own float32 arithmetic stands in for Jittor's kernels of the same ops."""
    return str(x.dtype) == "float32" and precision.compute_dtype() is None and bool(jt.flags.no_grad)


def gelu_wanted(x) -> bool:
    """`wanted(x, "gelu")`; in float32 decoding `wanted(x, "decode_gelu")`, the exact form."""
    if decoding_float32(x):
        return wanted(x, "decode_gelu", exact=True)
    return wanted(x, "gelu")


def gelu(x):
    if decoding_float32(x):
        return _gelu_forward_exact(x)
    return _Gelu()(x)


# ---------------------------------------------------------------- LayerNorm over the last axis
# CUDA: one warp per row; each lane holds its ceil(C/32) features (columns lane, lane+32, ...) in
# registers, so a row is read once per pass: mean, then the variance around it (two passes, as
# ops.layer_norm), then the output. The backward's dx takes one warp per row too; dweight and
# dbias (sums over rows) are partial sums per warp over a slice of rows, added by a small reduce.
_WARPS = _THREADS // 32
_PARTIAL_WARPS = 512  # warps that share the rows in the dweight/dbias kernel

_WARP_SUM = """
__device__ __forceinline__ float jla_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
"""


def _ln_forward_cuda(c, eps):
    vpl = -(-c // 32)
    return _WARP_SUM + f"""
__global__ void jla_ln_fwd(in0_type* __restrict__ x, in1_type* __restrict__ w, in2_type* __restrict__ b,
        out0_type* __restrict__ y, out1_type* __restrict__ mean, out2_type* __restrict__ rstd, int rows) {{
    int row = blockIdx.x * {_WARPS} + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * {c};
    float v[{vpl}];
    float s = 0.f;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        v[k] = col < {c} ? float(x[base + col]) : 0.f;
        s += v[k];
    }}
    float u = jla_warp_sum(s) / {c}.f;
    float q = 0.f;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        float d = col < {c} ? v[k] - u : 0.f;
        q += d * d;
    }}
    float sd = sqrtf(jla_warp_sum(q) / {c}.f + {eps!r}f);
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        if (col < {c}) y[base + col] = out0_type(float(w[col]) * ((v[k] - u) / sd) + float(b[col]));
    }}
    if (lane == 0) {{ mean[row] = u; rstd[row] = 1.f / sd; }}
}}
int rows = in0->numel() / {c};  // at run time: the prompt's rows differ from batch to batch
if (rows) jla_ln_fwd<<<(rows + {_WARPS - 1}) / {_WARPS}, {_THREADS}>>>(in0_p, in1_p, in2_p, out0_p, out1_p, out2_p, rows);
"""


def _ln_forward(x, weight, bias, eps):
    c = x.shape[-1]
    rows = x.numel() // c
    cuda = _ln_forward_cuda(c, eps)
    cpu = f"""
size_t rows = in0->numel() / {c};
for (size_t r = 0; r < rows; r++) {{
    size_t base = r * {c};
    float s = 0.f;
    for (int col = 0; col < {c}; col++) s += float(in0_p[base + col]);
    float u = s / {c}.f;
    float q = 0.f;
    for (int col = 0; col < {c}; col++) {{ float d = float(in0_p[base + col]) - u; q += d * d; }}
    float sd = std::sqrt(q / {c}.f + {eps!r}f);
    for (int col = 0; col < {c}; col++)
        out0_p[base + col] = out0_type(float(in1_p[col]) * ((float(in0_p[base + col]) - u) / sd) + float(in2_p[col]));
    out1_p[r] = u;
    out2_p[r] = 1.f / sd;
}}
"""
    # Output in the type ops.layer_norm's arithmetic promotes to: x's, unless the weight is wider.
    out_type = x.dtype if str(x.dtype) == str(weight.dtype) else "float32"
    return jt.code([x.shape, [rows], [rows]], [out_type, "float32", "float32"], [x, weight, bias],
                   cpu_header=_HEADER, cpu_src=cpu, cuda_header=_HEADER, cuda_src=cuda)


def _ln_backward_input(x, weight, mean, rstd, grad):
    """dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy * weight, xhat = (x - mean) rstd."""
    c = x.shape[-1]
    rows = x.numel() // c
    vpl = -(-c // 32)
    cuda = _WARP_SUM + f"""
__global__ void jla_ln_bwd_x(in0_type* __restrict__ x, in1_type* __restrict__ w, in2_type* __restrict__ mean,
        in3_type* __restrict__ rstd, in4_type* __restrict__ dy, out0_type* __restrict__ dx, int rows) {{
    int row = blockIdx.x * {_WARPS} + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * {c};
    float u = mean[row], rs = rstd[row];
    float xh[{vpl}], g[{vpl}];
    float sg = 0.f, sgx = 0.f;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        if (col < {c}) {{
            xh[k] = (float(x[base + col]) - u) * rs;
            g[k] = float(dy[base + col]) * float(w[col]);
        }} else {{ xh[k] = 0.f; g[k] = 0.f; }}
        sg += g[k];
        sgx += g[k] * xh[k];
    }}
    float mg = jla_warp_sum(sg) / {c}.f, mgx = jla_warp_sum(sgx) / {c}.f;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        if (col < {c}) dx[base + col] = out0_type(rs * (g[k] - mg - xh[k] * mgx));
    }}
}}
if ({rows}) jla_ln_bwd_x<<<({rows} + {_WARPS - 1}) / {_WARPS}, {_THREADS}>>>(in0_p, in1_p, in2_p, in3_p, in4_p, out0_p, {rows});
"""
    cpu = f"""
for (size_t r = 0; r < {rows}; r++) {{
    size_t base = r * {c};
    float u = in2_p[r], rs = in3_p[r];
    float sg = 0.f, sgx = 0.f;
    for (int col = 0; col < {c}; col++) {{
        float xh = (float(in0_p[base + col]) - u) * rs, g = float(in4_p[base + col]) * float(in1_p[col]);
        sg += g;
        sgx += g * xh;
    }}
    float mg = sg / {c}.f, mgx = sgx / {c}.f;
    for (int col = 0; col < {c}; col++) {{
        float xh = (float(in0_p[base + col]) - u) * rs, g = float(in4_p[base + col]) * float(in1_p[col]);
        out0_p[base + col] = out0_type(rs * (g - mg - xh * mgx));
    }}
}}
"""
    return jt.code(x.shape, x.dtype, [x, weight, mean, rstd, grad],
                   cpu_header=_HEADER, cpu_src=cpu, cuda_header=_HEADER, cuda_src=cuda)


def _ln_backward_params(x, mean, rstd, grad):
    """dweight = sum over rows of dy * xhat, dbias = sum of dy: float32 partial sums (one row of
    partials per warp on CUDA, one in all on the CPU), then added."""
    c = x.shape[-1]
    rows = x.numel() // c
    vpl = -(-c // 32)
    parts = min(_PARTIAL_WARPS, rows) if jt.flags.use_cuda else 1
    per = -(-rows // parts) if rows else 0
    cuda = f"""
__global__ void jla_ln_bwd_wb(in0_type* __restrict__ x, in1_type* __restrict__ mean, in2_type* __restrict__ rstd,
        in3_type* __restrict__ dy, out0_type* __restrict__ pw, out1_type* __restrict__ pb, int rows) {{
    int part = blockIdx.x * {_WARPS} + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (part >= {parts}) return;
    float aw[{vpl}], ab[{vpl}];
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{ aw[k] = 0.f; ab[k] = 0.f; }}
    int end = (part + 1) * {per};
    if (end > rows) end = rows;  // not min(): CUDA's and Jittor's overloads are ambiguous here
    for (int row = part * {per}; row < end; row++) {{
        size_t base = (size_t)row * {c};
        float u = mean[row], rs = rstd[row];
        #pragma unroll
        for (int k = 0; k < {vpl}; k++) {{
            int col = lane + 32 * k;
            if (col < {c}) {{
                float d = float(dy[base + col]);
                aw[k] += d * (float(x[base + col]) - u) * rs;
                ab[k] += d;
            }}
        }}
    }}
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        if (col < {c}) {{ pw[(size_t)part * {c} + col] = aw[k]; pb[(size_t)part * {c} + col] = ab[k]; }}
    }}
}}
if ({parts}) jla_ln_bwd_wb<<<({parts} + {_WARPS - 1}) / {_WARPS}, {_THREADS}>>>(in0_p, in1_p, in2_p, in3_p, out0_p, out1_p, {rows});
"""
    cpu = f"""
for (int col = 0; col < {c}; col++) {{ out0_p[col] = 0.f; out1_p[col] = 0.f; }}
for (size_t r = 0; r < {rows}; r++) {{
    size_t base = r * {c};
    float u = in1_p[r], rs = in2_p[r];
    for (int col = 0; col < {c}; col++) {{
        float d = float(in3_p[base + col]);
        out0_p[col] += d * (float(in0_p[base + col]) - u) * rs;
        out1_p[col] += d;
    }}
}}
"""
    pw, pb = jt.code([[parts, c], [parts, c]], ["float32", "float32"], [x, mean, rstd, grad],
                     cpu_header=_HEADER, cpu_src=cpu, cuda_header=_HEADER, cuda_src=cuda)
    return pw.sum(0), pb.sum(0)


class _LayerNorm(jt.Function):
    """LayerNorm over the last axis with float32 statistics, one kernel per pass (dx; dweight and
    dbias together, computed only when a parameter needs them)."""

    def __init__(self, eps):
        self.eps = float(eps)

    def execute(self, x, weight, bias):
        y, self.mean, self.rstd = _ln_forward(x, weight, bias, self.eps)
        self.x, self.weight, self.bias = x, weight, bias
        return y

    def grad(self, grad_output):
        dx = _ln_backward_input(self.x, self.weight, self.mean, self.rstd, grad_output)
        dw, db = _ln_backward_params(self.x, self.mean, self.rstd, grad_output)
        return dx, dw.cast(self.weight.dtype), db.cast(self.bias.dtype)


def layer_norm_wanted(x) -> bool:
    """`wanted(x, "layer_norm")`, and in float32 decoding too. There the forward is ops.py's
    float32 arithmetic (two-pass mean and variance, the same normalising expression) with only
    the order in which a row's terms are added differing: an order Jittor's own CUDA reductions
    do not fix either (they add with atomics, so two runs differ in the last bits), while this
    kernel adds the same way every run. Against float64 it is no less accurate than the exact
    path (GPU test, passed on an H200: mean error within 1.05x, largest within 1.5x); Jittor's
    two reductions per norm took 0.12 ms a call at the beam's decode shape on an H200, torch's
    LayerNorm 0.006 ms (logs/gpu-benchmark/jmma-2026-12-04, call C)."""
    return wanted(x, "layer_norm", exact=decoding_float32(x))


def layer_norm(x, weight, bias, eps):
    if x.shape[-1] != weight.shape[0] or weight.ndim != 1:
        raise ValueError(f"layer_norm: weight of shape {list(weight.shape)} does not fit the last "
                         f"axis of x {list(x.shape)}")
    if decoding_float32(x):  # decoding: no statistics kept for a backward
        return _ln_forward(x, weight, bias, float(eps))[0]
    return _LayerNorm(eps)(x, weight, bias)


# ---------------------------------------------------------------- softmax over the last axis
# The attention probabilities: one warp per row (up to _SOFTMAX_MAX_WIDTH keys, held in
# registers), float32 max, exp and sum. Inside autocast the output is stored in the products'
# type (bf16): the next product casts it to that type anyway, so the values it receives are the
# same, and neither pass makes a float32 copy of the probabilities or of their gradient.
_SOFTMAX_MAX_WIDTH = 2048

_WARP_MAX = """
__device__ __forceinline__ float jla_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
"""


def softmax_wanted(x, dim) -> bool:
    """`wanted(x, "softmax")` for a softmax along the last axis of at most _SOFTMAX_MAX_WIDTH entries."""
    last = dim in (-1, x.ndim - 1)
    return last and 0 < x.shape[-1] <= _SOFTMAX_MAX_WIDTH and wanted(x, "softmax")


def _softmax_forward(x, out_type):
    width = x.shape[-1]
    rows = x.numel() // width
    vpl = -(-width // 32)
    cuda = _WARP_SUM + _WARP_MAX + f"""
__global__ void jla_softmax_fwd(in0_type* __restrict__ x, out0_type* __restrict__ y, int rows) {{
    int row = blockIdx.x * {_WARPS} + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * {width};
    float v[{vpl}];
    float m = -INFINITY;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        v[k] = col < {width} ? float(x[base + col]) : -INFINITY;
        m = fmaxf(m, v[k]);
    }}
    m = jla_warp_max(m);
    float s = 0.f;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        v[k] = col < {width} ? expf(v[k] - m) : 0.f;
        s += v[k];
    }}
    s = jla_warp_sum(s);
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        if (col < {width}) y[base + col] = out0_type(v[k] / s);
    }}
}}
if ({rows}) jla_softmax_fwd<<<({rows} + {_WARPS - 1}) / {_WARPS}, {_THREADS}>>>(in0_p, out0_p, {rows});
"""
    cpu = f"""
for (size_t r = 0; r < {rows}; r++) {{
    size_t base = r * {width};
    float m = -INFINITY;
    for (int col = 0; col < {width}; col++) m = std::fmax(m, float(in0_p[base + col]));
    float s = 0.f;
    for (int col = 0; col < {width}; col++) s += std::exp(float(in0_p[base + col]) - m);
    for (int col = 0; col < {width}; col++)
        out0_p[base + col] = out0_type(std::exp(float(in0_p[base + col]) - m) / s);
}}
"""
    return jt.code(x.shape, out_type, [x], cpu_header=_HEADER, cpu_src=cpu,
                   cuda_header=_HEADER, cuda_src=cuda)


def _softmax_backward(y, grad, in_type):
    """dx = y (g - sum(g y)) per row, in the input's type."""
    width = y.shape[-1]
    rows = y.numel() // width
    vpl = -(-width // 32)
    cuda = _WARP_SUM + f"""
__global__ void jla_softmax_bwd(in0_type* __restrict__ y, in1_type* __restrict__ g, out0_type* __restrict__ dx, int rows) {{
    int row = blockIdx.x * {_WARPS} + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t base = (size_t)row * {width};
    float yv[{vpl}], gv[{vpl}];
    float s = 0.f;
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        yv[k] = col < {width} ? float(y[base + col]) : 0.f;
        gv[k] = col < {width} ? float(g[base + col]) : 0.f;
        s += yv[k] * gv[k];
    }}
    s = jla_warp_sum(s);
    #pragma unroll
    for (int k = 0; k < {vpl}; k++) {{
        int col = lane + 32 * k;
        if (col < {width}) dx[base + col] = out0_type(yv[k] * (gv[k] - s));
    }}
}}
if ({rows}) jla_softmax_bwd<<<({rows} + {_WARPS - 1}) / {_WARPS}, {_THREADS}>>>(in0_p, in1_p, out0_p, {rows});
"""
    cpu = f"""
for (size_t r = 0; r < {rows}; r++) {{
    size_t base = r * {width};
    float s = 0.f;
    for (int col = 0; col < {width}; col++) s += float(in0_p[base + col]) * float(in1_p[base + col]);
    for (int col = 0; col < {width}; col++)
        out0_p[base + col] = out0_type(float(in0_p[base + col]) * (float(in1_p[base + col]) - s));
}}
"""
    return jt.code(y.shape, in_type, [y, grad], cpu_header=_HEADER, cpu_src=cpu,
                   cuda_header=_HEADER, cuda_src=cuda)


class _Softmax(jt.Function):
    """Softmax over the last axis, one kernel per pass; the backward reads the saved output."""

    def execute(self, x):
        self.in_type = x.dtype
        self.y = _softmax_forward(x, precision.compute_dtype() or x.dtype)
        return self.y

    def grad(self, grad_output):
        return _softmax_backward(self.y, grad_output, self.in_type)


def softmax(x):
    return _Softmax()(x)


# ---------------------------------------------------------------- cross-entropy over the vocabulary
# The loss of the language model on (N, V) logits as they leave the tied head (bf16 inside autocast:
# no float32 copy of them, of their exponentials or of their gradient is made; at gpt2.md's batch
# these are 0.8 GB each). Forward: one block per row, a float32 running max and sum of exp, the
# row's log-sum-exp saved; backward: one pass writing g (softmax - (1 - s) onehot - s / V).
# The CPU source sums in float64, as ops.cross_entropy does.
_CE_THREADS = 256


def _ce_forward(logits, labels, smoothing):
    n, v = logits.shape
    cuda = _WARP_SUM + _WARP_MAX + f"""
__global__ void jla_ce_fwd(const in0_type* __restrict__ x, const in1_type* __restrict__ labels,
        float* __restrict__ loss, float* __restrict__ lse, int V) {{
    __shared__ float red_m[{_CE_THREADS // 32}], red_s[{_CE_THREADS // 32}], red_t[{_CE_THREADS // 32}];
    int row = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const in0_type* xr = x + (size_t)row * V;
    float m = -INFINITY, s = 0.f, t = 0.f;
    for (int c = tid; c < V; c += {_CE_THREADS}) {{
        float v = float(xr[c]);
        if (v > m) {{ s = s * __expf(m - v) + 1.f; m = v; }} else s += __expf(v - m);
        t += v;
    }}
    float wm = jla_warp_max(m);
    s = (m == -INFINITY ? 0.f : s * __expf(m - wm));
    s = jla_warp_sum(s); t = jla_warp_sum(t);
    if (lane == 0) {{ red_m[warp] = wm; red_s[warp] = s; red_t[warp] = t; }}
    __syncthreads();
    if (warp == 0) {{
        float bm = lane < {_CE_THREADS // 32} ? red_m[lane] : -INFINITY;
        float bs = lane < {_CE_THREADS // 32} ? red_s[lane] : 0.f;
        float bt = lane < {_CE_THREADS // 32} ? red_t[lane] : 0.f;
        float gm = jla_warp_max(bm);
        bs = bm == -INFINITY ? 0.f : bs * __expf(bm - gm);
        bs = jla_warp_sum(bs); bt = jla_warp_sum(bt);
        if (lane == 0) {{
            float l = gm + logf(bs);
            long long label = (long long)labels[row];
            float target = label >= 0 ? float(xr[label]) : 0.f;
            float value = (1.f - {smoothing!r}f) * (l - target) + {smoothing!r}f * (l - bt / (float)V);
            loss[row] = label == -1 ? 0.f : value;
            lse[row] = l;
        }}
    }}
}}
int N = in0->shape[0], V = in0->shape[1];
if (N) jla_ce_fwd<<<N, {_CE_THREADS}>>>(in0_p, in1_p, out0_p, out1_p, V);
"""
    cpu = f"""
int N = in0->shape[0], V = in0->shape[1];
for (int r = 0; r < N; r++) {{
    const in0_type* xr = in0_p + (size_t)r * V;
    float m = -INFINITY;
    for (int c = 0; c < V; c++) m = std::fmax(m, float(xr[c]));
    double s = 0.0, t = 0.0;
    for (int c = 0; c < V; c++) {{ float sh = float(xr[c]) - m; s += (double)std::exp(sh); t += (double)sh; }}
    float lse = (float)std::log(s);
    long long label = (long long)in1_p[r];
    float target = label >= 0 ? float(xr[label]) - m : 0.f;
    float smooth = lse - (float)(t / V);
    float value = (1.f - {smoothing!r}f) * (lse - target) + {smoothing!r}f * smooth;
    out0_p[r] = label == -1 ? 0.f : value;
    out1_p[r] = m + lse;
}}
"""
    return jt.code([[n], [n]], ["float32", "float32"], [logits, labels],
                   cpu_header=_HEADER, cpu_src=cpu, cuda_header=_HEADER, cuda_src=cuda)


def _ce_backward(logits, labels, lse, grad, smoothing):
    n, v = logits.shape
    cuda = f"""
__global__ void jla_ce_bwd(const in0_type* __restrict__ x, const in1_type* __restrict__ labels,
        const float* __restrict__ lse, const in3_type* __restrict__ g, out0_type* __restrict__ dx, int V) {{
    int row = blockIdx.y;
    long long label = (long long)labels[row];
    float gr = label == -1 ? 0.f : float(g[row]), l = lse[row];
    size_t base = (size_t)row * V;
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < V; c += gridDim.x * blockDim.x) {{
        float p = __expf(float(x[base + c]) - l);
        float d = p - {smoothing!r}f / (float)V - (c == label ? 1.f - {smoothing!r}f : 0.f);
        dx[base + c] = out0_type(gr * d);
    }}
}}
int N = in0->shape[0], V = in0->shape[1];
dim3 grid(16, N);
if (N) jla_ce_bwd<<<grid, {_CE_THREADS}>>>(in0_p, in1_p, in2_p, in3_p, out0_p, V);
"""
    cpu = f"""
int N = in0->shape[0], V = in0->shape[1];
for (int r = 0; r < N; r++) {{
    long long label = (long long)in1_p[r];
    float gr = label == -1 ? 0.f : float(in3_p[r]), l = in2_p[r];
    size_t base = (size_t)r * V;
    for (int c = 0; c < V; c++) {{
        float p = std::exp(float(in0_p[base + c]) - l);
        float d = p - {smoothing!r}f / (float)V - (c == label ? 1.f - {smoothing!r}f : 0.f);
        out0_p[base + c] = out0_type(gr * d);
    }}
}}
"""
    return jt.code(logits.shape, logits.dtype, [logits, labels, lse, grad],
                   cpu_header=_HEADER, cpu_src=cpu, cuda_header=_HEADER, cuda_src=cuda)


class _CrossEntropy(jt.Function):
    """Per-row label-smoothed cross-entropy of (N, V) logits (0 where the label is -1): one
    kernel each way, float32 arithmetic, the gradient in the logits' type."""

    def __init__(self, smoothing):
        self.smoothing = float(smoothing)

    def execute(self, logits, labels):
        loss, self.lse = _ce_forward(logits, labels, self.smoothing)
        self.logits, self.labels = logits, labels
        return loss

    def grad(self, grad_output):
        return _ce_backward(self.logits, self.labels, self.lse, grad_output, self.smoothing), None


def cross_entropy(logits, labels, smoothing):
    if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"cross_entropy: logits (N, V) and labels (N,) expected, got "
                         f"{list(logits.shape)} and {list(labels.shape)}")
    return _CrossEntropy(smoothing)(logits, labels.stop_grad())
