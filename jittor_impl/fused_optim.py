"""The reference AdamW and gradient clipping as two multi-tensor kernels (twin of
torch_impl/fused_optim.py, which does the same with torch's `_foreach_*` ops).

`optim.py` walks the 48 LoRA tensors of gpt2.md one at a time: Jittor builds, fuses and launches
~250 small ops per update and synchronises twice, and on an H200 the host needed about as long
as the GPU for the whole step (logs/gpu-benchmark/jfast23c-2026-12-03/call1/anatomy.md). With
these two ops the step ran 38.7 -> 37.7 ms and 1,181 -> 983 kernels there
(logs/gpu-benchmark/jfast23d-2026-12-04/README.md).
Here the global gradient norm is one `jt.code` op (per-block partial sums, then one block adds
them in a fixed order: deterministic), and clipping plus the Adam update plus the decay of the
updated weights are one more, over every tensor of a parameter group at once (up to 32 tensors
per kernel launch, so the pointer table stays inside CUDA's 4 KB of kernel parameters; up to 192
tensors per op, as Jittor's JIT fails on an op of 1,000 inputs or more: full fine-tuning). The
arithmetic is optim.py's, in its order, in float32; the per-tensor state is the same, so
checkpoints and `optimizer_state()` do not change. The clip is not applied to the gradients
themselves: `foreach_grad_norm_and_clip` hands the norm to the next `step()`, which scales
each gradient as it reads it.

When: as fused_kernels.py's kernels ("auto": on CUDA inside the mixed-precision step, i.e. with
`precision.autocast` active around the update; "on"/"off"; JLA_FUSED_OPS names "optimizer").
Otherwise both fall back to optim.py's exact loop, so the fp32 path is unchanged.
tests/test_jittor_fused_optim.py checks them against that loop.
"""
import math

from . import fused_kernels
from .optim import AdamW, grad_norm_and_clip
from .runtime import jt

_CHUNK = 32  # tensors per kernel launch
_TENSORS_PER_OP = 192  # one jt.code op's share of a group's update: 4 inputs and 3 outputs each
_GRADS_PER_OP = 960  # one op's gradients in the norm (Jittor's JIT fails from 1,000 inputs of one op)
_ELEMS = 4096  # elements per CUDA block (and per partial sum of the norm)
_THREADS = 256
_DEVICE_TYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

_CUDA_HEADER = f"""
#include <type/fp16_compute.h>
namespace jla_fo {{
constexpr int CHUNK = {_CHUNK};
constexpr long long ELEMS = {_ELEMS};
constexpr int THREADS = {_THREADS};
template <class G> struct NormTable {{
    G* g[CHUNK]; long long n[CHUNK]; int first[CHUNK + 1]; int count;
}};
template <class P, class G> struct StepTable {{
    P* p[CHUNK]; G* g[CHUNK]; float* m[CHUNK]; float* v[CHUNK];
    P* po[CHUNK]; float* mo[CHUNK]; float* vo[CHUNK];
    long long n[CHUNK]; int first[CHUNK + 1]; int count;
}};
struct Hyper {{ float max_norm, b1, omb1, b2, omb2, eps, step_size, lrwd; int clip, decay; }};
__device__ inline int tensor_of(const int* first, int count, int block) {{
    int k = 0;
    while (k + 1 < count && first[k + 1] <= block) k++;
    return k;
}}
__device__ inline float block_sum(float s, float* shared) {{
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int w = THREADS / 2; w > 0; w >>= 1) {{
        if (threadIdx.x < w) shared[threadIdx.x] += shared[threadIdx.x + w];
        __syncthreads();
    }}
    return shared[0];
}}
template <class G> __global__ void sum_squares(NormTable<G> t, float* partials) {{
    __shared__ float shared[THREADS];
    int k = tensor_of(t.first, t.count, blockIdx.x);
    long long start = (long long)(blockIdx.x - t.first[k]) * ELEMS;
    long long end = start + ELEMS < t.n[k] ? start + ELEMS : t.n[k];
    float s = 0.f;
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {{
        float x = float(t.g[k][i]);
        s += x * x;
    }}
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}}
__global__ void norm_of_partials(const float* partials, int n, float* norm) {{
    __shared__ float shared[THREADS];
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += THREADS) s += partials[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) norm[0] = sqrtf(s);
}}
template <class P, class G> __global__ void clip_adamw(StepTable<P, G> t, const float* norm, Hyper h) {{
    int k = tensor_of(t.first, t.count, blockIdx.x);
    long long start = (long long)(blockIdx.x - t.first[k]) * ELEMS;
    long long end = start + ELEMS < t.n[k] ? start + ELEMS : t.n[k];
    G coef = G(1.f);
    if (h.clip) coef = G(fminf(h.max_norm / (norm[0] + 1e-6f), 1.f));
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {{
        float g = h.clip ? float(G(float(t.g[k][i]) * float(coef))) : float(t.g[k][i]);
        float m = t.m[k][i] * h.b1 + g * h.omb1;
        float v = t.v[k][i] * h.b2 + g * g * h.omb2;
        float denom = sqrtf(v) + h.eps;
        float p = float(t.p[k][i]) - h.step_size * m / denom;
        if (h.decay) p = p - h.lrwd * p;
        t.mo[k][i] = m;
        t.vo[k][i] = v;
        t.po[k][i] = P(p);
    }}
}}
}}  // namespace jla_fo
"""

_CPU_HEADER = f"""
#include <cmath>
#include <type/fp16_compute.h>
namespace jla_fo {{
constexpr long long ELEMS = {_ELEMS};
template <class G> void sum_squares(const G* g, long long n, double* total) {{
    for (long long start = 0; start < n; start += ELEMS) {{
        float s = 0.f;
        long long end = start + ELEMS < n ? start + ELEMS : n;
        for (long long i = start; i < end; i++) {{ float x = float(g[i]); s += x * x; }}
        *total += s;
    }}
}}
struct Hyper {{ float max_norm, b1, omb1, b2, omb2, eps, step_size, lrwd; int clip, decay; }};
template <class P, class G> void clip_adamw(const P* pi, const G* gi, const float* mi, const float* vi,
        P* po, float* mo, float* vo, long long n, float norm, const Hyper& h) {{
    G coef = G(1.f);
    if (h.clip) coef = G(std::fmin(h.max_norm / (norm + 1e-6f), 1.f));
    for (long long i = 0; i < n; i++) {{
        float g = h.clip ? float(G(float(gi[i]) * float(coef))) : float(gi[i]);
        float m = mi[i] * h.b1 + g * h.omb1;
        float v = vi[i] * h.b2 + g * g * h.omb2;
        float denom = std::sqrt(v) + h.eps;
        float p = float(pi[i]) - h.step_size * m / denom;
        if (h.decay) p = p - h.lrwd * p;
        mo[i] = m;
        vo[i] = v;
        po[i] = P(p);
    }}
}}
}}  // namespace jla_fo
"""


def _fused(values):
    return bool(values) and fused_kernels.wanted(values[0], "optimizer")


def _chunks(indices):
    return [indices[i:i + _CHUNK] for i in range(0, len(indices), _CHUNK)]


def _by_types(*lists):
    """Indices of the tensors grouped by their dtypes (one kernel instance per group)."""
    groups = {}
    for i, tensors in enumerate(zip(*lists)):
        groups.setdefault(tuple(str(t.dtype) for t in tensors), []).append(i)
    return list(groups.values())


def _blocks(n):
    return -(-n // _ELEMS)


def norm_sources(grads):
    """(CUDA source, CPU source, number of partial sums) of `global_grad_norm`. A CUDA table holds
    one gradient dtype (its pointers are typed), so tensors are chunked within each dtype."""
    cuda, cpu, partials = [], ["double total = 0.0;"], 0
    for group in _by_types(grads):
        for chunk in _chunks(group):
            first = partials
            lines = [f"{{ jla_fo::NormTable<in{chunk[0]}_type> t; t.count = {len(chunk)}; int b = 0;"]
            for j, i in enumerate(chunk):
                lines.append(f"t.g[{j}] = in{i}_p; t.n[{j}] = in{i}->numel(); t.first[{j}] = b; "
                             f"b += (int)((t.n[{j}] + jla_fo::ELEMS - 1) / jla_fo::ELEMS);")
            lines.append(f"t.first[{len(chunk)}] = b;")
            lines.append(f"if (b) jla_fo::sum_squares<<<b, jla_fo::THREADS>>>(t, out0_p + {first}); }}")
            cuda += lines
            partials += sum(_blocks(grads[i].numel()) for i in chunk)
            cpu += [f"jla_fo::sum_squares(in{i}_p, in{i}->numel(), &total);" for i in chunk]
    cuda.append(f"jla_fo::norm_of_partials<<<1, jla_fo::THREADS>>>(out0_p, {partials}, out1_p);")
    cpu.append("out1_p[0] = std::sqrt((float)total);")
    return "\n".join(cuda), "\n".join(cpu), partials


def global_grad_norm(grads):
    """sqrt(sum of every gradient's squares) as one op (one per 960 gradients, the squares
    then added in order): a [1] float32 var."""
    if len(grads) > _GRADS_PER_OP:
        parts = [global_grad_norm(grads[i:i + _GRADS_PER_OP]) for i in range(0, len(grads), _GRADS_PER_OP)]
        return sum(part * part for part in parts).sqrt()
    cuda, cpu, partials = norm_sources(grads)
    _, norm = jt.code([[max(partials, 1)], [1]], ["float32", "float32"], list(grads),
                      cuda_header=_CUDA_HEADER, cuda_src=cuda,
                      cpu_header=_CPU_HEADER, cpu_src=cpu)
    return norm


def _hyper_source(data):
    return ("jla_fo::Hyper h; h.max_norm = data[\"max_norm\"]; h.b1 = data[\"b1\"]; "
            "h.omb1 = data[\"omb1\"]; h.b2 = data[\"b2\"]; h.omb2 = data[\"omb2\"]; "
            "h.eps = data[\"eps\"]; h.step_size = data[\"step_size\"]; h.lrwd = data[\"lrwd\"]; "
            "h.clip = data[\"clip\"] != 0; h.decay = data[\"decay\"] != 0;")


def clip_adamw(params, grads, exp_avgs, exp_avg_sqs, norm, data):
    """New (params, exp_avgs, exp_avg_sqs) after clipping each gradient by data's max_norm
    against `norm` (when data["clip"]) and one AdamW step with data's constants, as one op."""
    n = len(params)
    ins = [norm] + list(params) + list(grads) + list(exp_avgs) + list(exp_avg_sqs)
    at = {"p": 1, "g": 1 + n, "m": 1 + 2 * n, "v": 1 + 3 * n}
    cuda, cpu = [_hyper_source(data)], [_hyper_source(data), "float norm = in0_p[0];"]
    for group in _by_types(params, grads):
        for chunk in _chunks(group):
            p0, g0 = chunk[0] + at["p"], chunk[0] + at["g"]
            lines = [f"{{ jla_fo::StepTable<in{p0}_type, in{g0}_type> t; t.count = {len(chunk)}; int b = 0;"]
            for j, i in enumerate(chunk):
                p, g, m, v = (i + at[k] for k in "pgmv")
                lines.append(f"t.p[{j}] = in{p}_p; t.g[{j}] = in{g}_p; t.m[{j}] = in{m}_p; "
                             f"t.v[{j}] = in{v}_p; t.po[{j}] = out{i}_p; t.mo[{j}] = out{i + n}_p; "
                             f"t.vo[{j}] = out{i + 2 * n}_p; t.n[{j}] = in{p}->numel(); t.first[{j}] = b; "
                             f"b += (int)((t.n[{j}] + jla_fo::ELEMS - 1) / jla_fo::ELEMS);")
                cpu.append(f"jla_fo::clip_adamw(in{p}_p, in{g}_p, in{m}_p, in{v}_p, out{i}_p, "
                           f"out{i + n}_p, out{i + 2 * n}_p, in{p}->numel(), norm, h);")
            lines.append(f"t.first[{len(chunk)}] = b;")
            lines.append("if (b) jla_fo::clip_adamw<<<b, jla_fo::THREADS>>>(t, in0_p, h); }")
            cuda += lines
    shapes = [p.shape for p in params] + [m.shape for m in exp_avgs] + [v.shape for v in exp_avg_sqs]
    dtypes = [p.dtype for p in params] + ["float32"] * (2 * n)
    outs = jt.code(shapes, dtypes, ins, data=data,
                   cuda_header=_CUDA_HEADER, cuda_src="\n".join(cuda),
                   cpu_header=_CPU_HEADER, cpu_src="\n".join(cpu))
    return outs[:n], outs[n:2 * n], outs[2 * n:]


class ForeachAdamW(AdamW):
    """microsoft/LoRA's AdamW (see optim.AdamW) with the clip of `foreach_grad_norm_and_clip`,
    one op per parameter group and step count on the fused path."""

    pending_clip = None  # (norm, max_norm) from foreach_grad_norm_and_clip, for the next step

    def step(self, loss=None, retain_graph=False):
        if not _fused(self.grads()):
            self.apply_pending_clip()
            return super().step(loss, retain_graph)
        self.pre_step(loss, retain_graph)
        norm, max_norm = self.pending_clip or (None, 0.0)
        self.pending_clip = None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            pairs = self.grads_of(group)
            for p, _ in pairs:
                state = self.param_state(p)
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = jt.zeros(p.shape, "float32").stop_grad()
                    state["exp_avg_sq"] = jt.zeros(p.shape, "float32").stop_grad()
                state["step"] += 1
            for count, chosen in self.ops_of(pairs):
                states = [self.param_state(p) for p, _ in chosen]
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size *= math.sqrt(1.0 - beta2 ** count) / (1.0 - beta1 ** count)
                data = {"max_norm": max_norm, "clip": float(max_norm > 0), "b1": beta1,
                        "omb1": 1.0 - beta1, "b2": beta2, "omb2": 1.0 - beta2, "eps": group["eps"],
                        "step_size": step_size, "lrwd": group["lr"] * group["weight_decay"],
                        "decay": float(group["weight_decay"] > 0.0)}
                new_p, new_m, new_v = clip_adamw(
                    [p for p, _ in chosen], [g for _, g in chosen], [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states],
                    norm if norm is not None else jt.zeros([1], "float32"), data)
                for (p, _), s, p1, m1, v1 in zip(chosen, states, new_p, new_m, new_v):
                    p.update(p1)
                    s["exp_avg"].update(m1)
                    s["exp_avg_sq"].update(v1)
        self.post_step()

    def ops_of(self, pairs):
        """(step count, up to 192 (param, grad) pairs) for each op of a group's update: one step
        count per op (one count in practice), 192 tensors at most (_TENSORS_PER_OP)."""
        for count in sorted({self.param_state(p)["step"] for p, _ in pairs}):
            same = [(p, g) for p, g in pairs if self.param_state(p)["step"] == count]
            for start in range(0, len(same), _TENSORS_PER_OP):
                yield count, same[start:start + _TENSORS_PER_OP]

    def apply_pending_clip(self):
        """Scale the gradients by a clip handed over for the fused step, as optim.py does."""
        if self.pending_clip is None:
            return
        norm, max_norm = self.pending_clip
        self.pending_clip = None
        clip_coef = jt.minimum(max_norm / (norm + 1e-6), 1.0)
        for g in self.grads():
            g.update(g * clip_coef.cast(g.dtype))


def foreach_grad_norm_and_clip(optimizer, max_norm):
    """optim.grad_norm_and_clip as one op; the clip itself is left to the optimizer's next step
    (ForeachAdamW). Off the fused path: optim.py's, computed now (one sync) as it always was."""
    grads = optimizer.grads()
    if not (_fused(grads) and isinstance(optimizer, ForeachAdamW)):
        total_norm = grad_norm_and_clip(optimizer, max_norm)
        jt.sync([total_norm])
        return total_norm
    total_norm = global_grad_norm(grads)
    if max_norm > 0:
        optimizer.pending_clip = (total_norm, float(max_norm))
    return total_norm
