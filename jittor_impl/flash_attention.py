"""Fused causal attention for the Jittor twin: flash-attention-style kernels, forward and backward.

softmax(q k^T / sqrt(d) + causal mask) v for q (B, H, Tq, D) and k, v (B, H, Tk, D), the query
rows being the last Tq of Tk positions (row i sees keys j <= i + Tk - Tq, as the reference's
`bias[:, :, ns-nd:ns, :ns]`), and with `len_kv` (one int per batch row) keys at or beyond
`len_kv[b]` masked too (the cached decoding of beam.py). Jittor 1.3.11 has no such kernel; its
attention is the formula written out, which keeps the [B, H, T, T] scores, their probabilities
and casts of both for the backward pass (about 5 GiB of a gpt2.md step at batch 8, seq 512).

The kernels (`jt.code`, a CUDA and a CPU source each, backward through `jt.Function`):
- forward: one block of 4 warps per 64 query rows of one (batch, head); key/value tiles of 64
  rows pass through shared memory; q k^T and p v are tensor-core products (nvcuda::wmma, bf16 or
  fp16 operands, float32 accumulation); the softmax is online (running max and sum per row in
  float32), so no [T, T] tensor exists. Saved for the backward: the output and the per-row
  log-sum-exp (float32), nothing of size T^2.
- backward: first delta = rowsum(dO * O) (float32), then one block per 64 keys, walking the query
  tiles that can see them: it recomputes p = exp(s - lse), and accumulates dV += p^T dO and
  dK += dS^T q in registers, dQ += dS k into a float32 buffer with atomic adds
  (dS = p (dO v^T - delta)).
The packed form (`packed_flash_attention`, model.py's self-attention through ops.qkv_attention)
runs the same kernels on the fused projection's output qkv (B, T, 3C) = [q | k | v], each
(B, T, H, D), read in place through strides (_STRIDES): the output is written as (B, T, H, D) =
(B, T, C) in the compute type and the gradient as one float32 (B, T, 3C) tensor, so the split of
qkv, the head permutes around the kernels and their backward copies are gone.
The operands are rounded to the compute type (bf16 inside precision.autocast("bfloat16"), else the
input's 16-bit type) before the products, the probabilities and dS before theirs; every sum is
float32. The CPU source computes the same function with the same roundings, row by row: the CPU
tests check it against the exact path, the GPU tests check the CUDA source against both.
Masked scores are skipped (weight exactly 0), as the reference's -1e10 gives in float32.
"""
from . import precision
from .runtime import jt

LOW_PRECISION = ("bfloat16", "float16")
HEAD_DIMS = (16, 32, 48, 64, 80, 96, 112, 128)  # multiples of the 16-wide tensor-core tile
_ROWS = 64  # query rows per forward block, keys per backward block (4 warps x 16)


def compute_type(x):
    """The products' operand type: autocast's, else x's own 16-bit type (None: not supported)."""
    dtype = precision.compute_dtype() or str(x.dtype)
    return dtype if dtype in LOW_PRECISION else None


def supported(q, k, v, len_kv=None) -> bool:
    """Whether the kernels take these inputs (else ops.py keeps the exact path)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or compute_type(q) is None:
        return False
    b, h, tq, d = q.shape
    if list(k.shape) != list(v.shape) or list(k.shape[:2]) != [b, h] or k.shape[3] != d:
        return False
    return d in HEAD_DIMS and 0 < tq <= k.shape[2]


def _ct(name):
    return {"bfloat16": "__nv_bfloat16", "float16": "__half"}[name]


def _header(ct, d, cuda):
    common = f"#include <cmath>\n#include <type/fp16_compute.h>\n#define JLA_D {d}\n"
    if cuda:
        return common + f"#include <mma.h>\ntypedef {_ct(ct)} jla_ct;\n" + _STRIDES.replace("JLA_HD", "__host__ __device__")
    # The CPU source rounds as CUDA does (nearest even), not as Jittor's CPU bfloat16 (truncation).
    if ct == "bfloat16":
        rnd = ("inline float jla_round(float f) { unsigned u; std::memcpy(&u, &f, 4);"
               " if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);"
               " u &= 0xffff0000u; std::memcpy(&f, &u, 4); return f; }\n")
    else:
        rnd = "inline float jla_round(float f) { return float(jittor::float16(f)); }\n"
    return (common + "#include <cstring>\n#include <vector>\n#include <algorithm>\n" + rnd
            + _STRIDES.replace("JLA_HD", ""))


# Where row t of (batch b, head h) starts, for q (and dq), k and v (and dk, dv), the output (and
# its gradient): b * xb + h * xh + t * xt. Separate inputs are contiguous (B, H, T, D); the packed
# layout is the fused projection's (B, T, 3, H, D) output, read in place, and its output (B, T, H, D).
_STRIDES = """
struct jla_strides {
    long long qb, qh, qt, kb, kh, kt, ob, oh, ot;
    JLA_HD size_t q_base(int bh, int H) const { return (size_t)((bh / H) * qb + (bh % H) * qh); }
    JLA_HD size_t k_base(int bh, int H) const { return (size_t)((bh / H) * kb + (bh % H) * kh); }
    JLA_HD size_t o_base(int bh, int H) const { return (size_t)((bh / H) * ob + (bh % H) * oh); }
};
"""


# Shared-memory rows are padded by 8 16-bit (or 4 float) elements: 16-byte-aligned rows that
# wmma can load (ldm a multiple of 8 / 4) and fewer bank conflicts.
_SMEM_HELPERS = """
__device__ __forceinline__ int jla_align(int bytes) { return (bytes + 127) & ~127; }
__device__ __forceinline__ int jla_imin(int a, int b) { return a < b ? a : b; }
"""

_FWD_CUDA = _SMEM_HELPERS + """
template <typename QT, typename KT, typename VT, typename OT>
__global__ void __launch_bounds__(128) jla_flash_fwd(const QT* __restrict__ q,
        const KT* __restrict__ k, const VT* __restrict__ v, const int* __restrict__ len_kv,
        OT* __restrict__ o, float* __restrict__ lse, int H, int Tq, int Tk, float scale, jla_strides st) {
    using namespace nvcuda;
    constexpr int D = JLA_D, LD = JLA_D + 8, LS = 64 + 4, LP = 64 + 8, LO = JLA_D + 4;
    extern __shared__ __align__(128) unsigned char smem[];
    int off = 0;
    jla_ct* sQ = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    jla_ct* sK = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    jla_ct* sV = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    float* sS = (float*)(smem + off); off += jla_align(64 * LS * 4);
    jla_ct* sP = (jla_ct*)(smem + off); off += jla_align(64 * LP * 2);
    float* sO = (float*)(smem + off);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int bh = blockIdx.y, q0 = blockIdx.x * 64, shift = Tk - Tq;
    const size_t qbase = st.q_base(bh, H), kbase = st.k_base(bh, H), obase = st.o_base(bh, H);
    const int klen = len_kv ? jla_imin(Tk, len_kv[bh / H]) : Tk;
    for (int i = tid; i < 64 * D; i += 128) {
        int r = i / D, c = i % D;
        sQ[r * LD + c] = jla_ct(q0 + r < Tq ? float(q[qbase + (size_t)(q0 + r) * st.qt + c]) : 0.f);
    }
    for (int i = tid; i < 64 * LO; i += 128) sO[i] = 0.f;
    // this lane's softmax row within its warp's 16, and which half of the columns it takes
    const int row = lane >> 1, half = lane & 1, qrow = q0 + warp * 16 + row;
    float m = -INFINITY, l = 0.f;
    const int kend = jla_imin(klen, q0 + 63 + shift + 1);
    for (int k0 = 0; k0 < kend; k0 += 64) {
        __syncthreads();
        for (int i = tid; i < 64 * D; i += 128) {
            int r = i / D, c = i % D;
            bool in = k0 + r < Tk;
            sK[r * LD + c] = jla_ct(in ? float(k[kbase + (size_t)(k0 + r) * st.kt + c]) : 0.f);
            sV[r * LD + c] = jla_ct(in ? float(v[kbase + (size_t)(k0 + r) * st.kt + c]) : 0.f);
        }
        __syncthreads();
        float* wS = sS + warp * 16 * LS;
        #pragma unroll
        for (int n = 0; n < 4; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
            #pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, jla_ct, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, jla_ct, wmma::col_major> b;
                wmma::load_matrix_sync(a, sQ + warp * 16 * LD + kk * 16, LD);
                wmma::load_matrix_sync(b, sK + n * 16 * LD + kk * 16, LD);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(wS + n * 16, acc, LS, wmma::mem_row_major);
        }
        __syncwarp();
        // online softmax over this tile's 64 keys: two lanes per row, 32 columns each
        float s[32], tmax = -INFINITY;
        #pragma unroll
        for (int i = 0; i < 32; i++) {
            int c = half + 2 * i, key = k0 + c;
            bool ok = key < klen && key <= qrow + shift;
            s[i] = ok ? wS[row * LS + c] * scale : -INFINITY;
            tmax = fmaxf(tmax, s[i]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        float mnew = fmaxf(m, tmax);
        float base = mnew == -INFINITY ? 0.f : mnew;
        float alpha = m == -INFINITY ? 0.f : __expf(m - base);
        float tsum = 0.f;
        jla_ct* wP = sP + warp * 16 * LP;
        #pragma unroll
        for (int i = 0; i < 32; i++) {
            float p = __expf(s[i] - base);
            tsum += p;
            wP[row * LP + half + 2 * i] = jla_ct(p);
        }
        tsum += __shfl_xor_sync(0xffffffffu, tsum, 1);
        l = l * alpha + tsum;
        m = mnew;
        float* wO = sO + warp * 16 * LO;
        for (int c = half; c < D; c += 2) wO[row * LO + c] *= alpha;
        __syncwarp();
        #pragma unroll
        for (int dn = 0; dn < D / 16; dn++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, wO + dn * 16, LO, wmma::mem_row_major);
            #pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, jla_ct, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, jla_ct, wmma::row_major> b;
                wmma::load_matrix_sync(a, wP + kk * 16, LP);
                wmma::load_matrix_sync(b, sV + kk * 16 * LD + dn * 16, LD);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(wO + dn * 16, acc, LO, wmma::mem_row_major);
        }
        __syncwarp();
    }
    __syncwarp();
    if (qrow < Tq) {
        float* wO = sO + warp * 16 * LO;
        float inv = 1.f / l;
        for (int c = half; c < D; c += 2) o[obase + (size_t)qrow * st.ot + c] = OT(wO[row * LO + c] * inv);
        if (half == 0) lse[(size_t)bh * Tq + qrow] = m + logf(l);
    }
}
"""

_FWD_LAUNCH = """
int smem = 0;
smem += 3 * ((64 * (JLA_D + 8) * 2 + 127) & ~127);
smem += (64 * (64 + 4) * 4 + 127) & ~127;
smem += (64 * (64 + 8) * 2 + 127) & ~127;
smem += 64 * (JLA_D + 4) * 4;
auto kernel = jla_flash_fwd<jla_qt, jla_kt, jla_vt, out0_type>;
cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
dim3 grid((Tq + 63) / 64, B * H);
if (B * H && Tq) kernel<<<grid, 128, smem>>>(Q, K, V, LENKV, out0_p, out1_p, H, Tq, Tk, SCALE, st);
"""

_DELTA_CUDA = """
template <typename OT, typename GT>
__global__ void jla_flash_delta(const OT* __restrict__ o, const GT* __restrict__ g,
        float* __restrict__ delta, int rows, int H, int Tq, jla_strides st) {
    int r = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    size_t at = st.o_base(r / Tq, H) + (size_t)(r % Tq) * st.ot;
    float s = 0.f;
    for (int c = lane; c < JLA_D; c += 32) s += float(o[at + c]) * float(g[at + c]);
    for (int w = 16; w > 0; w >>= 1) s += __shfl_xor_sync(0xffffffffu, s, w);
    if (lane == 0) delta[r] = s;
}
"""

_BWD_CUDA = _SMEM_HELPERS + """
template <typename QT, typename KT, typename VT, typename GT, typename DKT, typename DVT>
__global__ void __launch_bounds__(128) jla_flash_bwd(const QT* __restrict__ q,
        const KT* __restrict__ k, const VT* __restrict__ v, const GT* __restrict__ go,
        const float* __restrict__ lse, const float* __restrict__ delta, const int* __restrict__ len_kv,
        float* __restrict__ dq, DKT* __restrict__ dk, DVT* __restrict__ dv,
        int H, int Tq, int Tk, float scale, jla_strides st) {
    using namespace nvcuda;
    constexpr int D = JLA_D, LD = JLA_D + 8, LS = 64 + 4, LP = 64 + 8, LO = JLA_D + 4;
    extern __shared__ __align__(128) unsigned char smem[];
    int off = 0;
    jla_ct* sK = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    jla_ct* sV = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    jla_ct* sQ = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    jla_ct* sG = (jla_ct*)(smem + off); off += jla_align(64 * LD * 2);
    float* sS = (float*)(smem + off); off += jla_align(64 * LS * 4);
    float* sdP = (float*)(smem + off); off += jla_align(64 * LS * 4);
    jla_ct* sPT = (jla_ct*)(smem + off); off += jla_align(64 * LP * 2);
    jla_ct* sdST = (jla_ct*)(smem + off); off += jla_align(64 * LP * 2);
    float* sF = (float*)(smem + off); off += jla_align(64 * LO * 4);
    float* sL = (float*)(smem + off); off += jla_align(64 * 4);
    float* sDelta = (float*)(smem + off);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int bh = blockIdx.y, k0 = blockIdx.x * 64, shift = Tk - Tq;
    const size_t qbase = st.q_base(bh, H), kbase = st.k_base(bh, H), obase = st.o_base(bh, H);
    const int klen = len_kv ? jla_imin(Tk, len_kv[bh / H]) : Tk;
    for (int i = tid; i < 64 * D; i += 128) {
        int r = i / D, c = i % D;
        bool in = k0 + r < Tk;
        sK[r * LD + c] = jla_ct(in ? float(k[kbase + (size_t)(k0 + r) * st.kt + c]) : 0.f);
        sV[r * LD + c] = jla_ct(in ? float(v[kbase + (size_t)(k0 + r) * st.kt + c]) : 0.f);
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dk_acc[D / 16], dv_acc[D / 16];
    #pragma unroll
    for (int dn = 0; dn < D / 16; dn++) { wmma::fill_fragment(dk_acc[dn], 0.f); wmma::fill_fragment(dv_acc[dn], 0.f); }
    int qstart = k0 - shift;
    if (qstart < 0) qstart = 0;
    qstart = (qstart / 64) * 64;
    for (int q0 = (k0 < klen ? qstart : Tq); q0 < Tq; q0 += 64) {
        __syncthreads();
        for (int i = tid; i < 64 * D; i += 128) {
            int r = i / D, c = i % D;
            bool in = q0 + r < Tq;
            sQ[r * LD + c] = jla_ct(in ? float(q[qbase + (size_t)(q0 + r) * st.qt + c]) : 0.f);
            sG[r * LD + c] = jla_ct(in ? float(go[obase + (size_t)(q0 + r) * st.ot + c]) : 0.f);
        }
        if (tid < 64) {
            bool in = q0 + tid < Tq;
            sL[tid] = in ? lse[(size_t)bh * Tq + q0 + tid] : 0.f;
            sDelta[tid] = in ? delta[(size_t)bh * Tq + q0 + tid] : 0.f;
        }
        __syncthreads();
        // this warp's 16 keys against the tile's 64 queries: s^T = k q^T, dP^T = v dO^T
        float* wS = sS + warp * 16 * LS;
        float* wdP = sdP + warp * 16 * LS;
        #pragma unroll
        for (int n = 0; n < 4; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc, acc2;
            wmma::fill_fragment(acc, 0.f);
            wmma::fill_fragment(acc2, 0.f);
            #pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, jla_ct, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, jla_ct, wmma::col_major> b;
                wmma::load_matrix_sync(a, sK + warp * 16 * LD + kk * 16, LD);
                wmma::load_matrix_sync(b, sQ + n * 16 * LD + kk * 16, LD);
                wmma::mma_sync(acc, a, b, acc);
                wmma::load_matrix_sync(a, sV + warp * 16 * LD + kk * 16, LD);
                wmma::load_matrix_sync(b, sG + n * 16 * LD + kk * 16, LD);
                wmma::mma_sync(acc2, a, b, acc2);
            }
            wmma::store_matrix_sync(wS + n * 16, acc, LS, wmma::mem_row_major);
            wmma::store_matrix_sync(wdP + n * 16, acc2, LS, wmma::mem_row_major);
        }
        __syncwarp();
        for (int i = lane; i < 16 * 64; i += 32) {
            int r = i / 64, c = i % 64, key = k0 + warp * 16 + r, qq = q0 + c;
            bool ok = key < klen && qq < Tq && key <= qq + shift;
            float p = ok ? __expf(wS[r * LS + c] * scale - sL[c]) : 0.f;
            jla_ct pr = jla_ct(p);
            float ds = float(pr) * (wdP[r * LS + c] - sDelta[c]);
            ds = ok ? ds : 0.f;
            sPT[(warp * 16 + r) * LP + c] = pr;
            sdST[(warp * 16 + r) * LP + c] = jla_ct(ds);
        }
        __syncwarp();
        #pragma unroll
        for (int dn = 0; dn < D / 16; dn++) {
            #pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, jla_ct, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, jla_ct, wmma::row_major> b;
                wmma::load_matrix_sync(a, sPT + warp * 16 * LP + kk * 16, LP);
                wmma::load_matrix_sync(b, sG + kk * 16 * LD + dn * 16, LD);
                wmma::mma_sync(dv_acc[dn], a, b, dv_acc[dn]);
                wmma::load_matrix_sync(a, sdST + warp * 16 * LP + kk * 16, LP);
                wmma::load_matrix_sync(b, sQ + kk * 16 * LD + dn * 16, LD);
                wmma::mma_sync(dk_acc[dn], a, b, dk_acc[dn]);
            }
        }
        __syncthreads();
        // dQ of the tile's queries (this warp: 16 of them) += dS k, over the block's 64 keys
        float* wF = sF + warp * 16 * LO;
        #pragma unroll
        for (int dn = 0; dn < D / 16; dn++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
            #pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, jla_ct, wmma::col_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, jla_ct, wmma::row_major> b;
                wmma::load_matrix_sync(a, sdST + kk * 16 * LP + warp * 16, LP);
                wmma::load_matrix_sync(b, sK + kk * 16 * LD + dn * 16, LD);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(wF + dn * 16, acc, LO, wmma::mem_row_major);
        }
        __syncwarp();
        for (int i = lane; i < 16 * D; i += 32) {
            int r = i / D, c = i % D, qq = q0 + warp * 16 + r;
            if (qq < Tq) atomicAdd(dq + qbase + (size_t)qq * st.qt + c, wF[r * LO + c] * scale);
        }
    }
    __syncthreads();
    float* wF = sF + warp * 16 * LO;
    #pragma unroll
    for (int dn = 0; dn < D / 16; dn++) wmma::store_matrix_sync(wF + dn * 16, dk_acc[dn], LO, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
        int r = i / D, c = i % D, key = k0 + warp * 16 + r;
        if (key < Tk) dk[kbase + (size_t)key * st.kt + c] = DKT(wF[r * LO + c] * scale);
    }
    __syncwarp();
    #pragma unroll
    for (int dn = 0; dn < D / 16; dn++) wmma::store_matrix_sync(wF + dn * 16, dv_acc[dn], LO, wmma::mem_row_major);
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
        int r = i / D, c = i % D, key = k0 + warp * 16 + r;
        if (key < Tk) dv[kbase + (size_t)key * st.kt + c] = DVT(wF[r * LO + c]);
    }
}
"""

_BWD_LAUNCH = """
int rows = B * H * Tq;
cudaMemsetAsync(DQ, 0, dq_elems * sizeof(float), 0);
if (rows) jla_flash_delta<<<(rows + 7) / 8, 256>>>(OSAVED, GO, DELTA, rows, H, Tq, st);
int smem = 0;
smem += 4 * ((64 * (JLA_D + 8) * 2 + 127) & ~127);
smem += 2 * ((64 * (64 + 4) * 4 + 127) & ~127);
smem += 2 * ((64 * (64 + 8) * 2 + 127) & ~127);
smem += (64 * (JLA_D + 4) * 4 + 127) & ~127;
smem += 2 * 64 * 4 + 128;
auto kernel = jla_flash_bwd<jla_qt, jla_kt, jla_vt, jla_gt, jla_dkt, jla_dvt>;
cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
dim3 grid((Tk + 63) / 64, B * H);
if (B * H && Tk) kernel<<<grid, 128, smem>>>(Q, K, V, GO, LSE, DELTA, LENKV, DQ, DK, DV, H, Tq, Tk, SCALE, st);
"""

# The CPU sources: the same function and roundings, one query row (forward) or one (batch, head)
# (backward) at a time, plain loops.
_FWD_CPU = """
const int D = JLA_D, shift = Tk - Tq;
std::vector<float> kr((size_t)Tk * D), vr((size_t)Tk * D), s(Tk), qr(D), acc(D);
for (int bh = 0; bh < B * H; bh++) {
    size_t qbase = st.q_base(bh, H), kbase = st.k_base(bh, H), obase = st.o_base(bh, H);
    int klen = LENKV ? std::min(Tk, (int)LENKV[bh / H]) : Tk;
    for (int j = 0; j < Tk; j++) for (int c = 0; c < D; c++) {
        size_t at = kbase + (size_t)j * st.kt + c;
        kr[(size_t)j * D + c] = jla_round(float(K[at])); vr[(size_t)j * D + c] = jla_round(float(V[at]));
    }
    for (int i = 0; i < Tq; i++) {
        for (int c = 0; c < D; c++) qr[c] = jla_round(float(Q[qbase + (size_t)i * st.qt + c]));
        int end = std::min(klen, i + shift + 1);
        float m = -INFINITY;
        for (int j = 0; j < end; j++) {
            float t = 0.f;
            for (int c = 0; c < D; c++) t += qr[c] * kr[(size_t)j * D + c];
            s[j] = t * SCALE;
            m = std::max(m, s[j]);
        }
        float l = 0.f;
        for (int c = 0; c < D; c++) acc[c] = 0.f;
        for (int j = 0; j < end; j++) {
            float p = std::exp(s[j] - m);
            l += p;
            float pr = jla_round(p);
            for (int c = 0; c < D; c++) acc[c] += pr * vr[(size_t)j * D + c];
        }
        for (int c = 0; c < D; c++) out0_p[obase + (size_t)i * st.ot + c] = out0_type(JLA_OUT(acc[c] / l));
        out1_p[(size_t)bh * Tq + i] = m + std::log(l);
    }
}
"""

_BWD_CPU = """
const int D = JLA_D, shift = Tk - Tq;
std::vector<float> kr((size_t)Tk * D), vr((size_t)Tk * D), dk((size_t)Tk * D), dv((size_t)Tk * D);
std::vector<float> qr(D), gr(D), dqa(D);
for (int bh = 0; bh < B * H; bh++) {
    size_t qbase = st.q_base(bh, H), kbase = st.k_base(bh, H), obase = st.o_base(bh, H);
    int klen = LENKV ? std::min(Tk, (int)LENKV[bh / H]) : Tk;
    for (int j = 0; j < Tk; j++) for (int c = 0; c < D; c++) {
        size_t at = kbase + (size_t)j * st.kt + c;
        kr[(size_t)j * D + c] = jla_round(float(K[at])); vr[(size_t)j * D + c] = jla_round(float(V[at]));
        dk[(size_t)j * D + c] = 0.f; dv[(size_t)j * D + c] = 0.f;
    }
    for (int i = 0; i < Tq; i++) {
        size_t row = qbase + (size_t)i * st.qt, orow = obase + (size_t)i * st.ot;
        float delta = 0.f;
        for (int c = 0; c < D; c++) {
            delta += float(OSAVED[orow + c]) * float(GO[orow + c]);
            qr[c] = jla_round(float(Q[row + c]));
            gr[c] = jla_round(float(GO[orow + c]));
            dqa[c] = 0.f;
        }
        DELTA[(size_t)bh * Tq + i] = delta;
        float lse = LSE[(size_t)bh * Tq + i];
        int end = std::min(klen, i + shift + 1);
        for (int j = 0; j < end; j++) {
            float t = 0.f, dp = 0.f;
            for (int c = 0; c < D; c++) { t += qr[c] * kr[(size_t)j * D + c]; dp += gr[c] * vr[(size_t)j * D + c]; }
            float pr = jla_round(std::exp(t * SCALE - lse));
            float ds = jla_round(pr * (dp - delta));
            for (int c = 0; c < D; c++) {
                dv[(size_t)j * D + c] += pr * gr[c];
                dk[(size_t)j * D + c] += ds * qr[c];
                dqa[c] += ds * kr[(size_t)j * D + c];
            }
        }
        for (int c = 0; c < D; c++) DQ[row + c] = dqa[c] * SCALE;
    }
    for (int j = 0; j < Tk; j++) for (int c = 0; c < D; c++) {
        size_t at = kbase + (size_t)j * st.kt + c;
        DK[at] = jla_dkt(dk[(size_t)j * D + c] * SCALE);
        DV[at] = jla_dvt(dv[(size_t)j * D + c]);
    }
}
"""

# What each layout names: the sizes, the strides (see _STRIDES), typed pointers to q, k, v (and
# in the backward dO, the log-sum-exps, the saved output, dq, dk, dv, delta) and len_kv (or null).
# Separate inputs: forward (q, k, v[, len_kv]) -> (out, lse); backward (q, k, v, dO, lse, out
# [, len_kv]) -> (dq float32, dk, dv, delta). Packed: forward (qkv) -> (out (B, T, C) in the
# compute type, lse); backward (qkv, dO, lse, out) -> (dqkv float32, delta).
_SEPARATE_SIZES = """
int B = in0->shape[0], H = in0->shape[1], Tq = in0->shape[2], Tk = in1->shape[2];
jla_strides st = {(long long)H * Tq * JLA_D, (long long)Tq * JLA_D, JLA_D, (long long)H * Tk * JLA_D,
                  (long long)Tk * JLA_D, JLA_D, (long long)H * Tq * JLA_D, (long long)Tq * JLA_D, JLA_D};
typedef in0_type jla_qt; typedef in1_type jla_kt; typedef in2_type jla_vt;
const jla_qt* Q = in0_p; const jla_kt* K = in1_p; const jla_vt* V = in2_p;
"""
_SEPARATE_BWD = """
typedef in3_type jla_gt; typedef out1_type jla_dkt; typedef out2_type jla_dvt;
const jla_gt* GO = in3_p; const float* LSE = in4_p; const in5_type* OSAVED = in5_p;
float* DQ = out0_p; jla_dkt* DK = out1_p; jla_dvt* DV = out2_p; float* DELTA = out3_p;
size_t dq_elems = (size_t)B * H * Tq * JLA_D;
"""
_PACKED_SIZES = """
int B = in0->shape[0], Tq = in0->shape[1], Tk = Tq, C = in0->shape[2] / 3, H = C / JLA_D;
jla_strides st = {(long long)Tq * 3 * C, JLA_D, 3 * C, (long long)Tq * 3 * C, JLA_D, 3 * C,
                  (long long)Tq * C, JLA_D, C};
typedef in0_type jla_qt; typedef in0_type jla_kt; typedef in0_type jla_vt;
const jla_qt* Q = in0_p; const jla_kt* K = in0_p + C; const jla_vt* V = in0_p + 2 * C;
"""
_PACKED_BWD = """
typedef in1_type jla_gt; typedef float jla_dkt; typedef float jla_dvt;
const jla_gt* GO = in1_p; const float* LSE = in2_p; const in3_type* OSAVED = in3_p;
float* DQ = out0_p; float* DK = out0_p + C; float* DV = out0_p + 2 * C; float* DELTA = out1_p;
size_t dq_elems = (size_t)B * Tq * 3 * C;
"""


def _sources(template, launch, cpu, ct, d, scale, sizes, len_input=None, round_out=False):
    """The jt.code sources of one pass: `sizes` names the layout (see _SEPARATE_SIZES), `len_input`
    the input holding len_kv, if any; `round_out`: the output is stored in the compute type (the CPU
    source rounds it as CUDA does, then stores it exactly)."""
    scale_text = f"{scale!r}f"
    length = f"(const int*){len_input}_p" if len_input else "(const int*)0"
    prelude = sizes + f"const int* LENKV = {length};\n"
    out = "#define JLA_OUT(x) " + ("jla_round(x)" if round_out else "(x)") + "\n"
    # the kernels are templates, which jt.code leaves in the launch function's body unless they
    # stand in the header (it hoists only leading definitions that start with "__")
    return dict(cuda_header=_header(ct, d, True) + template, cuda_src=prelude + launch.replace("SCALE", scale_text),
                cpu_header=_header(ct, d, False) + out, cpu_src=prelude + cpu.replace("SCALE", scale_text))


def _forward(q, k, v, len_kv, ct, scale):
    b, h, tq, d = q.shape
    inputs = [q, k, v] + ([len_kv] if len_kv is not None else [])
    return jt.code([q.shape, [b, h, tq]], [q.dtype, "float32"], inputs,
                   **_sources(_FWD_CUDA, _FWD_LAUNCH, _FWD_CPU, ct, d, scale, _SEPARATE_SIZES,
                              "in3" if len_kv is not None else None))


def _backward(q, k, v, out, lse, grad, len_kv, ct, scale):
    b, h, tq, d = q.shape
    # inputs q k v dO lse O [len_kv]; outputs dq (float32, atomic sums) dk dv delta (rowsum(dO O))
    inputs = [q, k, v, grad, lse, out] + ([len_kv] if len_kv is not None else [])
    return jt.code([q.shape, k.shape, v.shape, [b, h, tq]], ["float32", k.dtype, v.dtype, "float32"],
                   inputs, **_sources(_DELTA_CUDA + _BWD_CUDA, _BWD_LAUNCH, _BWD_CPU, ct, d, scale,
                                      _SEPARATE_SIZES + _SEPARATE_BWD, "in6" if len_kv is not None else None))


def _forward_packed(qkv, n_head, ct, scale):
    b, t, c3 = qkv.shape
    return jt.code([[b, t, c3 // 3], [b, n_head, t]], [ct, "float32"], [qkv],
                   **_sources(_FWD_CUDA, _FWD_LAUNCH, _FWD_CPU, ct, c3 // 3 // n_head, scale,
                              _PACKED_SIZES, round_out=True))


def _backward_packed(qkv, out, lse, grad, n_head, ct, scale):
    b, t, c3 = qkv.shape
    return jt.code([qkv.shape, [b, n_head, t]], ["float32", "float32"], [qkv, grad, lse, out],
                   **_sources(_DELTA_CUDA + _BWD_CUDA, _BWD_LAUNCH, _BWD_CPU, ct, c3 // 3 // n_head, scale,
                              _PACKED_SIZES + _PACKED_BWD))


class _FlashAttention(jt.Function):
    def __init__(self, ct, scale):
        self.ct, self.scale = ct, scale

    def execute(self, q, k, v, len_kv=None):
        out, lse = _forward(q, k, v, len_kv, self.ct, self.scale)
        self.saved = (q, k, v, out, lse, len_kv)
        return out

    def grad(self, grad_output):
        q, k, v, out, lse, len_kv = self.saved
        dq, dk, dv, _ = _backward(q, k, v, out, lse, grad_output, len_kv, self.ct, self.scale)
        grads = (dq.cast(q.dtype), dk, dv)
        return grads + ((None,) if len_kv is not None else ())


def flash_attention(q, k, v, len_kv=None, scale=None):
    """Causal attention of q (B, H, Tq, D) over k, v (B, H, Tk, D), in q's type (see module);
    scores scaled by `scale` (None: 1/sqrt(D))."""
    if not supported(q, k, v, len_kv):
        raise ValueError(f"flash_attention: needs 16-bit compute (autocast or bf16/fp16 inputs), "
                         f"q (B, H, Tq, D) with D in {HEAD_DIMS} and k, v (B, H, Tk>=Tq, D); got "
                         f"q {list(q.shape)} {q.dtype}, k {list(k.shape)}, v {list(v.shape)}")
    if len_kv is not None:
        len_kv = len_kv.int32().stop_grad()
    scale = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else float(scale)
    return _FlashAttention(compute_type(q), scale)(q, k, v, len_kv)


def packed_supported(qkv, n_head) -> bool:
    """Whether the packed kernels take this fused projection output (else ops.py splits it)."""
    if qkv.ndim != 3 or compute_type(qkv) is None or qkv.shape[2] % (3 * n_head):
        return False
    return qkv.shape[2] // 3 // n_head in HEAD_DIMS and qkv.shape[1] > 0


class _PackedFlashAttention(jt.Function):
    def __init__(self, n_head, ct, scale):
        self.n_head, self.ct, self.scale = n_head, ct, scale

    def execute(self, qkv):
        out, lse = _forward_packed(qkv, self.n_head, self.ct, self.scale)
        self.saved = (qkv, out, lse)
        return out

    def grad(self, grad_output):
        qkv, out, lse = self.saved
        dqkv, _ = _backward_packed(qkv, out, lse, grad_output, self.n_head, self.ct, self.scale)
        return dqkv.cast(qkv.dtype)


def packed_flash_attention(qkv, n_head, scale=None):
    """Causal self-attention of the fused projection's output qkv (B, T, 3C) = [q | k | v], each
    (B, T, H, D), read in place: the output (B, T, C) = (B, T, H, D) in the compute type, heads
    already merged, and the gradient one (B, T, 3C) float32 tensor, so the split of qkv and the
    head permutes around the kernels are no copies (see module; scale None: 1/sqrt(D))."""
    if not packed_supported(qkv, n_head):
        raise ValueError(f"packed_flash_attention: needs 16-bit compute (autocast or bf16/fp16 input) and "
                         f"qkv (B, T, 3 * n_head * D) with D in {HEAD_DIMS}; got qkv {list(qkv.shape)} "
                         f"{qkv.dtype}, n_head {n_head}")
    d = qkv.shape[2] // 3 // n_head
    scale = 1.0 / float(d) ** 0.5 if scale is None else float(scale)
    return _PackedFlashAttention(n_head, compute_type(qkv), scale)(qkv)
