"""One float32 kernel for the attention of one new token per row against a cache (per-row beam
search): scores, length mask, softmax and the weighted sum of values, each key and value read once.

ops.fused_attention's float32 path at this shape is several kernels a layer on CUDA: cuBLAS's
batched q k^T (which with one query row ran at a fifth of the memory's speed on an H200: 0.60 ms
a call at 1050 rows x 16 heads x 128 keys, against 0.13 ms for p v over the same bytes), the
division and masks, Jittor's softmax kernel and p v. This kernel does the same float32 arithmetic
in one pass: s_j = (q . k_j) / divisor, -1e10 at and beyond the row's `len_kv`
(ops.py's `masked_fill`; its causal mask is all ones for one query row), then Jittor's softmax
(max, expf(s - max), their sum, each divided by it) and sum_j p_j v_j. What differs from the path
it replaces is only the order in which the dot products' and the sums' terms are added, an order
neither cuBLAS nor Jittor promises (the float32 policy of fused_kernels.py): each block adds in a
fixed order, so runs repeat bit for bit. Forward only: it serves decoding under `jt.no_grad()`.

CUDA: one block of 128 threads per (row, head). Scores: D/4 lanes (rounded up to a power of two)
share a key, each multiplying one float4 of its row, so a warp reads whole rows (coalesced), and
xor shuffles add the lanes' parts; block-wide max and sum by warp shuffles; for p v each thread
owns one feature over a strided share of the keys, the shares added in order.
The CPU source computes the same, row by row (the CPU tests compare it with the exact path).
"""
from . import fused_kernels
from .runtime import jt

_THREADS = 128
MAX_KEYS = 8192  # the probabilities of one (row, head) sit in shared memory: 32 KiB


def wanted(q, k, len_kv) -> bool:
    """Whether ops.fused_attention should take this kernel (fused_kernels' op "decode_attention"):
    one query row per (row, head) against a cache `takes` takes, with a `len_kv` mask."""
    one_row = q.ndim == 4 and q.shape[-2] == 1 and q.shape[-1] == k.shape[-1]
    return one_row and len_kv is not None and fused_kernels.decoding_float32(q) and takes(k)


def takes(k) -> bool:
    """Whether the kernel takes one-row queries against the cache `k` (rows, heads, keys, D): float32
    decoding, D a multiple of 4 (float4 loads) and at most 128, at most MAX_KEYS keys."""
    d = k.shape[-1]
    shape_fits = k.ndim == 4 and d % 4 == 0 and d <= _THREADS and 0 < k.shape[-2] <= MAX_KEYS
    decoding = fused_kernels.decoding_float32(k)  # no backward: never where gradients are wanted
    return shape_fits and decoding and fused_kernels.wanted(k, "decode_attention", exact=True)


# a block's max or sum: fused_kernels' warp shuffles, then the warps' results in order
_BLOCK_REDUCE = fused_kernels._WARP_SUM + fused_kernels._WARP_MAX + """
__device__ __forceinline__ float jla_block_reduce(float v, bool is_max, float* red) {
    v = is_max ? jla_warp_max(v) : jla_warp_sum(v);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // red is reused: the last reduction's readers are done
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < blockDim.x / 32; w++) v = is_max ? fmaxf(v, red[w]) : v + red[w];
    return v;
}
"""


def _key_offset(d, linked):
    """C expression: where key/value j of block (row n, head h) starts, in floats. `linked`: the
    cache is read through a row table (row_table.py), `rows_of` (rows, keys): key j of row n sits
    in row rows_of[n][j] of the cache."""
    row = "(size_t)rows_of[(size_t)n * keys + j]" if linked else "(size_t)n"
    return f"(({row} * heads + h) * keys + j) * {d}"


def _cuda(d, divisor, linked=False):
    parts = _THREADS // d  # threads per feature in p v (d divides 128 for the model's widths)
    words = d // 4  # float4 words of a key row
    lanes = 1 << (words - 1).bit_length()  # lanes per key: a power of two, so xor shuffles stay in the group
    return _BLOCK_REDUCE + f"""
__global__ void jla_decode_attention(const float* __restrict__ q, const float* __restrict__ k,
        const float* __restrict__ v, const int* __restrict__ len_kv, const int* __restrict__ rows_of,
        float* __restrict__ out, int heads, int keys) {{
    extern __shared__ float p[];  // keys scores, then probabilities
    __shared__ __align__(16) float qs[{d}];
    __shared__ float red[32], acc_part[{_THREADS}];
    size_t bh = blockIdx.x, n = bh / heads, h = bh % heads;
    int len = len_kv[n];
    if (threadIdx.x < {d}) qs[threadIdx.x] = q[bh * {d} + threadIdx.x];
    __syncthreads();
    // scores: {lanes} lanes per key, each a float4 of the row (coalesced), summed by xor shuffles
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / {lanes}, hl = lane % {lanes};
    float4 q4 = hl < {words} ? reinterpret_cast<const float4*>(qs)[hl] : make_float4(0.f, 0.f, 0.f, 0.f);
    float m = -INFINITY;
    for (int j0 = warp * {32 // lanes}; j0 < keys; j0 += (blockDim.x / 32) * {32 // lanes}) {{
        int j = j0 + sub;
        float part = 0.f;
        if (j < keys && hl < {words}) {{
            float4 kk = reinterpret_cast<const float4*>(k + {_key_offset(d, linked)})[hl];
            part = q4.x * kk.x + q4.y * kk.y + q4.z * kk.z + q4.w * kk.w;
        }}
        for (int o = {lanes // 2}; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
        if (hl == 0 && j < keys) {{
            float s = part / float32({divisor!r});
            if (j >= len) s = float32(-1e10);
            p[j] = s;
            m = fmaxf(m, s);
        }}
    }}
    m = jla_block_reduce(m, true, red);
    float sum = 0.f;
    for (int j = threadIdx.x; j < keys; j += blockDim.x) {{
        float e = expf(p[j] - m);
        p[j] = e;
        sum += e;
    }}
    sum = jla_block_reduce(sum, false, red);
    for (int j = threadIdx.x; j < keys; j += blockDim.x) p[j] = p[j] / sum;
    __syncthreads();
    int f = threadIdx.x % {d}, part = threadIdx.x / {d};
    float a = 0.f;
    if (part < {parts})
        for (int j = part; j < keys; j += {parts}) a += p[j] * v[{_key_offset(d, linked)} + f];
    acc_part[threadIdx.x] = a;
    __syncthreads();
    if (threadIdx.x < {d}) {{
        float total = acc_part[threadIdx.x];
        for (int r = 1; r < {parts}; r++) total += acc_part[r * {d} + threadIdx.x];
        out[bh * {d} + threadIdx.x] = total;
    }}
}}
int heads = in0->shape[1], keys = in1->shape[2];
size_t blocks = in0->numel() / {d};
if (blocks) jla_decode_attention<<<blocks, {_THREADS}, keys * sizeof(float)>>>(in0_p, in1_p, in2_p, in3_p, {"in4_p" if linked else "nullptr"}, out0_p, heads, keys);
"""


def _cpu(d, divisor, linked=False):
    # where each key starts, in a table: the loops are the same code with or without a row table,
    # so the compiler adds their terms in the same order (tests compare the two bit for bit)
    return f"""
int heads = in0->shape[1], keys = in1->shape[2];
size_t blocks = in0->numel() / {d};
const int* rows_of = {"in4_p" if linked else "nullptr"};
std::vector<float> p(keys);
std::vector<size_t> at(keys);
for (size_t bh = 0; bh < blocks; bh++) {{
    size_t n = bh / heads, h = bh % heads;
    int len = in3_p[n];
    const float* qb = in0_p + bh * {d};
    for (int j = 0; j < keys; j++) at[j] = {_key_offset(d, linked)};
    float m = -INFINITY;
    for (int j = 0; j < keys; j++) {{
        float dot = 0.f;
        for (int c = 0; c < {d}; c++) dot += qb[c] * in1_p[at[j] + c];
        float s = dot / float32({divisor!r});
        if (j >= len) s = float32(-1e10);
        p[j] = s;
        m = std::max(m, s);
    }}
    float sum = 0.f;
    for (int j = 0; j < keys; j++) {{ p[j] = std::exp(p[j] - m); sum += p[j]; }}
    for (int j = 0; j < keys; j++) p[j] = p[j] / sum;
    for (int c = 0; c < {d}; c++) {{
        float a = 0.f;
        for (int j = 0; j < keys; j++) a += p[j] * in2_p[at[j] + c];
        out0_p[bh * {d} + c] = a;
    }}
}}
"""


def decode_attention(q, k, v, len_kv, divisor, rows_of=None):
    """softmax(q k^T / divisor, keys at or beyond len_kv[row] masked) v for float32 q (N, H, 1, D),
    k and v (N, H, S, D), len_kv (N,): (N, H, 1, D). `rows_of` (N, S) int32: key and value j of
    row n are read from row rows_of[n, j] of k and v (row_table.py), not from row n."""
    d, divisor, linked = q.shape[-1], float(divisor), rows_of is not None
    header = "#include <cmath>\n#include <vector>\n#include <algorithm>\n"
    inputs = [q, k, v, len_kv.int32()] + ([rows_of.int32()] if linked else [])
    return jt.code(q.shape, "float32", inputs, cpu_header=header, cpu_src=_cpu(d, divisor, linked),
                   cuda_header=header, cuda_src=_cuda(d, divisor, linked))
