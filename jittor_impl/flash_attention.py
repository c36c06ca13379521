"""Fused causal attention for the Jittor twin: flash-attention-style kernels, forward and backward.

softmax(q k^T / sqrt(d) + causal mask) v for q (B, H, Tq, D) and k, v (B, H, Tk, D), the query
rows being the last Tq of Tk positions (row i sees keys j <= i + Tk - Tq, as the reference's
`bias[:, :, ns-nd:ns, :ns]`), and with `len_kv` (one int per batch row) keys at or beyond
`len_kv[b]` masked too (the cached decoding of beam.py). Jittor 1.3.11 has no such kernel; its
attention is the formula written out, which keeps the [B, H, T, T] scores, their probabilities
and casts of both for the backward pass (about 5 GiB of a gpt2.md step at batch 8, seq 512).

The kernels (`jt.code`, a CUDA and a CPU source each, backward through `jt.Function`) are written
by hand, as Jittor 1.3.11 has no fused attention to call: tensor-core products
through PTX `mma.sync` (m16n8k16, bf16 or fp16 operands, float32 accumulation, sm_80 and later),
operands loaded from shared memory with `ldmatrix`, tiles copied in 16-byte words.
- forward: one block of 4 warps per 64 query rows of one (batch, head); each warp keeps its 16
  rows of q as fragments in registers; key/value tiles of 64 rows pass through shared memory. The
  scores s = q k^T stay in registers, the softmax is online (running max and sum per row in
  float32, the 4 lanes of a row sharing them by shuffles), and p, rounded, is already the operand
  of p v (an accumulator tile's registers are an A fragment's), so no [T, T] tensor exists, not
  even a tile of it in shared memory. Saved for the backward: the output and the per-row
  log-sum-exp (float32), nothing of size T^2.
- backward: first delta = rowsum(dO * O) (float32), then one block per 64 keys (each warp 16 of
  them, their k and v as register fragments), walking the query tiles that can see them: it
  recomputes p^T = exp(s^T - lse) and dS^T = p^T (v dO^T - delta) in registers, accumulates
  dV += p^T dO and dK += dS^T q in registers, and dQ += dS k (dS^T through shared memory) into a
  float32 buffer with atomic adds.
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


def compute_type(x):
    """The products' operand type: autocast's, else x's own 16-bit type (None: not supported)."""
    dtype = precision.compute_dtype() or str(x.dtype)
    return dtype if dtype in LOW_PRECISION else None


MIN_CUDA_ARCH = 80  # mma.sync m16n8k16 with bf16/fp16 operands: Ampere and later


def device_archs():
    """The compute capabilities (e.g. [90]) of the GPUs Jittor compiles for; [] off CUDA."""
    return list(jt.flags.cuda_archs) if jt.flags.use_cuda else []


def runs_here() -> bool:
    """Whether the kernels run on this device: on CUDA they need sm_80 or later (older cards,
    e.g. a T4, keep ops.py's exact path); on the CPU their CPU source runs."""
    return all(arch >= MIN_CUDA_ARCH for arch in device_archs())


def supported(q, k, v, len_kv=None) -> bool:
    """Whether the kernels take these inputs (else ops.py keeps the exact path)."""
    if not runs_here():
        return False
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
        pair = {"bfloat16": ("__nv_bfloat162", "__floats2bfloat162_rn", "bf16"),
                "float16": ("__half2", "__floats2half2_rn", "f16")}[ct]
        return (common + "#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n"
                f"typedef {_ct(ct)} jla_ct;\ntypedef {pair[0]} jla_ct2;\n#define JLA_MMA_T \"{pair[2]}\"\n"
                f"__device__ __forceinline__ jla_ct2 jla_floats2(float a, float b) {{ return {pair[1]}(a, b); }}\n"
                + _STRIDES.replace("JLA_HD", "__host__ __device__"))
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
    // rows that start on 8-element boundaries (16 bytes of a 16-bit type): jla_load8's wide copies
    bool vectors() const { return JLA_D % 8 == 0 && (qb | qh | qt | kb | kh | kt | ob | oh | ot) % 8 == 0; }
};
"""


# Shared-memory rows are padded by 8 16-bit elements: 16-byte-aligned rows for ldmatrix, whose 8
# row addresses then fall in different banks.
_SMEM_HELPERS = """
__device__ __forceinline__ int jla_imin(int a, int b) { return a < b ? a : b; }
// 8 consecutive elements of a row into shared memory, in the compute type (zeros where `in` is
// false): one 16-byte copy when the source holds the compute type already and `vec` says every
// address is 16-byte aligned (the same bits the conversion gives), else element by element.
template <typename T>
__device__ __forceinline__ void jla_load8(jla_ct* dst, const T* src, bool in, bool vec) {
    #pragma unroll
    for (int e = 0; e < 8; e++) dst[e] = jla_ct(in ? float(src[e]) : 0.f);
}
template <>
__device__ __forceinline__ void jla_load8<jla_ct>(jla_ct* dst, const jla_ct* src, bool in, bool vec) {
    if (vec) {
        uint4 w = make_uint4(0u, 0u, 0u, 0u);
        if (in) w = *(const uint4*)src;
        *(uint4*)dst = w;
        return;
    }
    #pragma unroll
    for (int e = 0; e < 8; e++) dst[e] = jla_ct(in ? float(src[e]) : 0.f);
}
// 64 rows (from row r0 of at most `rows`) of D elements each into a shared tile of row stride D + 8
template <typename T>
__device__ __forceinline__ void jla_load_tile(jla_ct* dst, const T* src, size_t base, long long stride,
                                              int r0, int rows, int tid, bool vec) {
    for (int i = tid; i < 64 * JLA_D / 8; i += 128) {
        int r = i / (JLA_D / 8), c = i % (JLA_D / 8) * 8;
        bool in = r0 + r < rows;
        jla_load8(dst + r * (JLA_D + 8) + c, src + base + (size_t)(in ? r0 + r : 0) * stride + c, in, vec);
    }
}
// Tensor-core fragments (PTX mma.sync m16n8k16, sm_80+): lane = 4 * g + t holds, of a 16x16 A
// tile, rows g and g + 8 at columns 2t, 2t + 1 and 2t + 8, 2t + 9; of a 16x8 B tile, column g at
// rows 2t, 2t + 1 and 2t + 8, 2t + 9; of the 16x8 float32 accumulator, rows g and g + 8 at columns
// 2t, 2t + 1. ldmatrix loads four 8x8 tiles of shared memory (lanes 8i..8i+7 name tile i's rows),
// .trans transposed.
__device__ __forceinline__ void jla_ldm(unsigned* r, const jla_ct* p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void jla_ldm_t(unsigned* r, const jla_ct* p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void jla_mma(float* c, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." JLA_MMA_T "." JLA_MMA_T ".f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// two floats rounded to the compute type (nearest even), low half first: one register of a fragment
__device__ __forceinline__ unsigned jla_pack(float lo, float hi) {
    jla_ct2 v = jla_floats2(lo, hi);
    return *(unsigned*)&v;
}
// A fragments of a 16x16 tile stored row-major at p (row stride ld): rows from p, columns from 0
__device__ __forceinline__ const jla_ct* jla_a_addr(const jla_ct* p, int ld, int lane) {
    return p + (lane & 15) * ld + (lane >> 4) * 8;
}
// B fragments of two 8-wide column tiles (n, n + 8) x 16 of k, from a tile stored [n][k] (row
// stride ld): b[0..1] for columns n..n+7, b[2..3] for n+8..n+15 (ldmatrix, no transpose)
__device__ __forceinline__ const jla_ct* jla_bn_addr(const jla_ct* p, int ld, int lane) {
    return p + ((lane & 7) + (lane >> 4) * 8) * ld + ((lane >> 3) & 1) * 8;
}
// the same from a tile stored [k][n] (ldmatrix .trans): the address pattern of an A tile
#define jla_bk_addr jla_a_addr
template <int N>
__device__ __forceinline__ void jla_zero(float (&acc)[N][4]) {
    #pragma unroll
    for (int i = 0; i < N; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}
// acc (16 x D) += a (one 16 x 16 A fragment) times 16 rows of a shared tile stored [k][n] (row
// stride D + 8, read transposed by ldmatrix): p v, p^T dO, dS^T q, dS k
__device__ __forceinline__ void jla_mma_cols(float (&acc)[JLA_D / 8][4], const unsigned* a,
                                             const jla_ct* tile, int lane) {
    #pragma unroll
    for (int dn = 0; dn < JLA_D / 16; dn++) {
        unsigned b[4];
        jla_ldm_t(b, jla_bk_addr(tile + dn * 16, JLA_D + 8, lane));
        jla_mma(acc[2 * dn], a, b);
        jla_mma(acc[2 * dn + 1], a, b + 2);
    }
}
"""

_FWD_CUDA = _SMEM_HELPERS + """
template <typename QT, typename KT, typename VT, typename OT>
__global__ void __launch_bounds__(128) jla_flash_fwd(const QT* __restrict__ q,
        const KT* __restrict__ k, const VT* __restrict__ v, const int* __restrict__ len_kv,
        OT* __restrict__ o, float* __restrict__ lse, int H, int Tq, int Tk, float scale, jla_strides st,
        bool vec) {
    constexpr int D = JLA_D, LD = JLA_D + 8, NK = D / 16, ND = D / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    jla_ct* sQ = (jla_ct*)smem;
    jla_ct* sK = sQ + 64 * LD;
    jla_ct* sV = sK + 64 * LD;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, q0 = blockIdx.x * 64, shift = Tk - Tq;
    const size_t qbase = st.q_base(bh, H), kbase = st.k_base(bh, H), obase = st.o_base(bh, H);
    const int klen = len_kv ? jla_imin(Tk, len_kv[bh / H]) : Tk;
    jla_load_tile(sQ, q, qbase, st.qt, q0, Tq, tid, vec);
    __syncthreads();
    // this warp's 16 query rows as A fragments, kept in registers for every key tile
    unsigned qf[NK][4];
    #pragma unroll
    for (int kk = 0; kk < NK; kk++) jla_ldm(qf[kk], jla_a_addr(sQ + warp * 16 * LD + kk * 16, LD, lane));
    const int row0 = q0 + warp * 16 + g;  // this lane's rows: row0 and row0 + 8
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f}, acc[ND][4];
    jla_zero(acc);
    const int kend = jla_imin(klen, q0 + 63 + shift + 1);
    for (int k0 = 0; k0 < kend; k0 += 64) {
        __syncthreads();
        jla_load_tile(sK, k, kbase, st.kt, k0, Tk, tid, vec);
        jla_load_tile(sV, v, kbase, st.kt, k0, Tk, tid, vec);
        __syncthreads();
        // s = q k^T for the tile's 64 keys: 8 column tiles of 8 keys
        float s[8][4];
        jla_zero(s);
        #pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            #pragma unroll
            for (int np = 0; np < 4; np++) {
                unsigned b[4];
                jla_ldm(b, jla_bn_addr(sK + np * 16 * LD + kk * 16, LD, lane));
                jla_mma(s[2 * np], qf[kk], b);
                jla_mma(s[2 * np + 1], qf[kk], b + 2);
            }
        }
        // online softmax: the 4 lanes of a row (t = 0..3) share its max and sum
        float tmax[2] = {-INFINITY, -INFINITY};
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int key = k0 + j * 8 + 2 * t + (e & 1), row = row0 + (e >> 1) * 8;
                bool ok = key < klen && key <= row + shift;
                s[j][e] = ok ? s[j][e] * scale : -INFINITY;
                tmax[e >> 1] = fmaxf(tmax[e >> 1], s[j][e]);
            }
        }
        float base[2];
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            tmax[i] = fmaxf(tmax[i], __shfl_xor_sync(0xffffffffu, tmax[i], 1));
            tmax[i] = fmaxf(tmax[i], __shfl_xor_sync(0xffffffffu, tmax[i], 2));
            float mnew = fmaxf(m[i], tmax[i]);
            base[i] = mnew == -INFINITY ? 0.f : mnew;
            float alpha = m[i] == -INFINITY ? 0.f : __expf(m[i] - base[i]);
            m[i] = mnew;
            l[i] *= alpha;
            #pragma unroll
            for (int dn = 0; dn < ND; dn++) { acc[dn][2 * i] *= alpha; acc[dn][2 * i + 1] *= alpha; }
        }
        // p, rounded to the compute type, as the A fragments of p v (accumulator tiles 2kk, 2kk + 1
        // are exactly A tile kk's registers); the sums take p unrounded
        unsigned pf[4][4];
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            float p0 = __expf(s[j][0] - base[0]), p1 = __expf(s[j][1] - base[0]);
            float p2 = __expf(s[j][2] - base[1]), p3 = __expf(s[j][3] - base[1]);
            l[0] += p0 + p1;
            l[1] += p2 + p3;
            pf[j >> 1][(j & 1) * 2] = jla_pack(p0, p1);
            pf[j >> 1][(j & 1) * 2 + 1] = jla_pack(p2, p3);
        }
        #pragma unroll
        for (int kk = 0; kk < 4; kk++) jla_mma_cols(acc, pf[kk], sV + kk * 16 * LD, lane);
    }
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        int row = row0 + i * 8;
        if (row < Tq) {
            float inv = 1.f / l[i];
            OT* orow = o + obase + (size_t)row * st.ot;
            #pragma unroll
            for (int dn = 0; dn < ND; dn++) {
                orow[dn * 8 + 2 * t] = OT(acc[dn][2 * i] * inv);
                orow[dn * 8 + 2 * t + 1] = OT(acc[dn][2 * i + 1] * inv);
            }
            if (t == 0) lse[(size_t)bh * Tq + row] = m[i] + logf(l[i]);
        }
    }
}
"""

_FWD_LAUNCH = """
int smem = 3 * 64 * (JLA_D + 8) * 2;
auto kernel = jla_flash_fwd<jla_qt, jla_kt, jla_vt, out0_type>;
cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
dim3 grid((Tq + 63) / 64, B * H);
bool vec = st.vectors() && (((size_t)Q | (size_t)K | (size_t)V) & 15) == 0;
if (B * H && Tq) kernel<<<grid, 128, smem>>>(Q, K, V, LENKV, out0_p, out1_p, H, Tq, Tk, SCALE, st, vec);
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
        int H, int Tq, int Tk, float scale, jla_strides st, bool vec) {
    constexpr int D = JLA_D, LD = JLA_D + 8, LP = 64 + 8, NK = D / 16, ND = D / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    jla_ct* sK = (jla_ct*)smem;
    jla_ct* sV = sK + 64 * LD;
    jla_ct* sQ = sV + 64 * LD;
    jla_ct* sG = sQ + 64 * LD;
    jla_ct* sdS = sG + 64 * LD;              // dS^T of the tile: [key][query]
    float* sL = (float*)(sdS + 64 * LP);
    float* sDelta = sL + 64;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.y, k0 = blockIdx.x * 64, shift = Tk - Tq;
    const size_t qbase = st.q_base(bh, H), kbase = st.k_base(bh, H), obase = st.o_base(bh, H);
    const int klen = len_kv ? jla_imin(Tk, len_kv[bh / H]) : Tk;
    jla_load_tile(sK, k, kbase, st.kt, k0, Tk, tid, vec);
    jla_load_tile(sV, v, kbase, st.kt, k0, Tk, tid, vec);
    __syncthreads();
    // this warp's 16 keys of k and v as A fragments (rows: keys), kept for every query tile
    unsigned kf[NK][4], vf[NK][4];
    #pragma unroll
    for (int kk = 0; kk < NK; kk++) {
        jla_ldm(kf[kk], jla_a_addr(sK + warp * 16 * LD + kk * 16, LD, lane));
        jla_ldm(vf[kk], jla_a_addr(sV + warp * 16 * LD + kk * 16, LD, lane));
    }
    float dka[ND][4], dva[ND][4];
    jla_zero(dka);
    jla_zero(dva);
    const int key0 = k0 + warp * 16 + g;  // this lane's keys: key0 and key0 + 8
    int qstart = k0 - shift;
    if (qstart < 0) qstart = 0;
    qstart = (qstart / 64) * 64;
    for (int q0 = (k0 < klen ? qstart : Tq); q0 < Tq; q0 += 64) {
        __syncthreads();
        jla_load_tile(sQ, q, qbase, st.qt, q0, Tq, tid, vec);
        jla_load_tile(sG, go, obase, st.ot, q0, Tq, tid, vec);
        if (tid < 64) {
            bool in = q0 + tid < Tq;
            sL[tid] = in ? lse[(size_t)bh * Tq + q0 + tid] : 0.f;
            sDelta[tid] = in ? delta[(size_t)bh * Tq + q0 + tid] : 0.f;
        }
        __syncthreads();
        // this warp's 16 keys against the tile's 64 queries: s^T = k q^T, dP^T = v dO^T
        float s[8][4], dp[8][4];
        jla_zero(s);
        jla_zero(dp);
        #pragma unroll
        for (int kk = 0; kk < NK; kk++) {
            #pragma unroll
            for (int np = 0; np < 4; np++) {
                unsigned b[4];
                jla_ldm(b, jla_bn_addr(sQ + np * 16 * LD + kk * 16, LD, lane));
                jla_mma(s[2 * np], kf[kk], b);
                jla_mma(s[2 * np + 1], kf[kk], b + 2);
                jla_ldm(b, jla_bn_addr(sG + np * 16 * LD + kk * 16, LD, lane));
                jla_mma(dp[2 * np], vf[kk], b);
                jla_mma(dp[2 * np + 1], vf[kk], b + 2);
            }
        }
        // p^T = exp(s^T - lse) and dS^T = p (dP^T - delta), rounded to the compute type, as A
        // fragments (rows: keys; k: queries), and dS^T into shared memory for dQ
        unsigned pf[4][4], sf[4][4];
        #pragma unroll
        for (int j = 0; j < 8; j++) {
            float pv[4], dsv[4];
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int c = j * 8 + 2 * t + (e & 1), key = key0 + (e >> 1) * 8, qq = q0 + c;
                bool ok = key < klen && qq < Tq && key <= qq + shift;
                float p = ok ? __expf(s[j][e] * scale - sL[c]) : 0.f;
                float pr = float(jla_ct(p));
                pv[e] = pr;
                dsv[e] = ok ? pr * (dp[j][e] - sDelta[c]) : 0.f;
            }
            pf[j >> 1][(j & 1) * 2] = jla_pack(pv[0], pv[1]);
            pf[j >> 1][(j & 1) * 2 + 1] = jla_pack(pv[2], pv[3]);
            unsigned lo = jla_pack(dsv[0], dsv[1]), hi = jla_pack(dsv[2], dsv[3]);
            sf[j >> 1][(j & 1) * 2] = lo;
            sf[j >> 1][(j & 1) * 2 + 1] = hi;
            *(unsigned*)(sdS + (warp * 16 + g) * LP + j * 8 + 2 * t) = lo;
            *(unsigned*)(sdS + (warp * 16 + g + 8) * LP + j * 8 + 2 * t) = hi;
        }
        // dV += p^T dO, dK += dS^T q over the tile's queries
        #pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            jla_mma_cols(dva, pf[kk], sG + kk * 16 * LD, lane);
            jla_mma_cols(dka, sf[kk], sQ + kk * 16 * LD, lane);
        }
        __syncthreads();
        // dQ of the tile's queries (this warp: 16 of them) += dS k over the block's 64 keys: A
        // fragments of dS from its transpose in shared memory (ldmatrix .trans)
        float dqa[ND][4];
        jla_zero(dqa);
        #pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            unsigned a[4];
            jla_ldm_t(a, jla_bn_addr(sdS + kk * 16 * LP + warp * 16, LP, lane));
            jla_mma_cols(dqa, a, sK + kk * 16 * LD, lane);
        }
        #pragma unroll
        for (int i = 0; i < 2; i++) {
            int qq = q0 + warp * 16 + g + i * 8;
            if (qq >= Tq) continue;
            float* row = dq + qbase + (size_t)qq * st.qt;
            #pragma unroll
            for (int dn = 0; dn < ND; dn++) {
                atomicAdd(row + dn * 8 + 2 * t, dqa[dn][2 * i] * scale);
                atomicAdd(row + dn * 8 + 2 * t + 1, dqa[dn][2 * i + 1] * scale);
            }
        }
    }
    #pragma unroll
    for (int i = 0; i < 2; i++) {
        int key = key0 + i * 8;
        if (key >= Tk) continue;
        size_t at = kbase + (size_t)key * st.kt;
        #pragma unroll
        for (int dn = 0; dn < ND; dn++) {
            dk[at + dn * 8 + 2 * t] = DKT(dka[dn][2 * i] * scale);
            dk[at + dn * 8 + 2 * t + 1] = DKT(dka[dn][2 * i + 1] * scale);
            dv[at + dn * 8 + 2 * t] = DVT(dva[dn][2 * i]);
            dv[at + dn * 8 + 2 * t + 1] = DVT(dva[dn][2 * i + 1]);
        }
    }
}
"""

_BWD_LAUNCH = """
int rows = B * H * Tq;
cudaMemsetAsync(DQ, 0, dq_elems * sizeof(float), 0);
if (rows) jla_flash_delta<<<(rows + 7) / 8, 256>>>(OSAVED, GO, DELTA, rows, H, Tq, st);
int smem = 4 * 64 * (JLA_D + 8) * 2 + 64 * (64 + 8) * 2 + 2 * 64 * 4;
auto kernel = jla_flash_bwd<jla_qt, jla_kt, jla_vt, jla_gt, jla_dkt, jla_dvt>;
cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
dim3 grid((Tk + 63) / 64, B * H);
bool vec = st.vectors() && (((size_t)Q | (size_t)K | (size_t)V | (size_t)GO) & 15) == 0;
if (B * H && Tk) kernel<<<grid, 128, smem>>>(Q, K, V, GO, LSE, DELTA, LENKV, DQ, DK, DV, H, Tq, Tk, SCALE, st, vec);
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
                         f"q {list(q.shape)} {q.dtype}, k {list(k.shape)}, v {list(v.shape)}; on CUDA, "
                         f"sm_{MIN_CUDA_ARCH} or later (this GPU: {device_archs()})")
    if len_kv is not None:
        len_kv = len_kv.int32().stop_grad()
    scale = 1.0 / float(q.shape[-1]) ** 0.5 if scale is None else float(scale)
    return _FlashAttention(compute_type(q), scale)(q, k, v, len_kv)


def packed_supported(qkv, n_head) -> bool:
    """Whether the packed kernels take this fused projection output (else ops.py splits it)."""
    if not runs_here():
        return False
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
                         f"{qkv.dtype}, n_head {n_head}; on CUDA, sm_{MIN_CUDA_ARCH} or later (this GPU: {device_archs()})")
    d = qkv.shape[2] // 3 // n_head
    scale = 1.0 / float(d) ** 0.5 if scale is None else float(scale)
    return _PackedFlashAttention(n_head, compute_type(qkv), scale)(qkv)
