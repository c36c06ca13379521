"""Rows of an array picked by an index, as one wide copy per row (Jittor only; torch's
`index_select` already copies at the memory's speed).

Beam search reorders its whole key/value cache after every selection: `x[rows]` along axis 0 of
[beams, heads, width, head_dim] arrays, 48 of them per step at gpt2.md. Jittor 1.3.11 compiles
`jt.index_select` into its `getitem` kernel, an element-at-a-time copy that on an H200 took twice
torch's gather for the same bytes (logs/benchmark.md, Beam search: 1,533 ms against 737 ms per
batch of 105 MRs). Here each output row is copied as one block of 16-byte words (4-byte or 1-byte
words when the row's size or the arrays' addresses are not multiples of 16), so the copy is exact
for every dtype and is taken on CUDA in float32 too (`fused_kernels.wanted(..., exact=True)`).
No gradient: it serves the decoding loop, which runs under `jt.no_grad()`. An index out of range
gives a row of zeros rather than a read outside the array.
"""
from .fused_kernels import wanted
from .runtime import jt

_THREADS = 256
_BLOCKS_PER_ROW = 64  # at most: a row of [16, 128, 64] float32 is 512 KiB, 2 KiB per thread

# A template kernel must sit in the header: Jittor's code op lifts out of its launch function only
# the definitions that begin with an underscore (`__global__ ...`), and `template <...>` does not.
_CUDA_HEADER = """
#include <cstdint>
template <typename W>
__global__ void jla_gather_rows(const char* __restrict__ x, const int* __restrict__ rows,
        char* __restrict__ y, size_t row_words, int src_rows) {
    const int out_row = blockIdx.y;
    const int src = rows[out_row];
    const bool in = src >= 0 && src < src_rows;  // a row out of range comes out zero, not a wild read
    const W* from = (const W*)x + (size_t)(in ? src : 0) * row_words;
    W* to = (W*)y + (size_t)out_row * row_words;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < row_words;
         i += (size_t)gridDim.x * blockDim.x)
        to[i] = in ? from[i] : W();
}
"""

_CUDA_SRC = f"""
size_t row_bytes = in0->size / in0->shape[0];
int out_rows = out0->shape[0], src_rows = in0->shape[0];
size_t aligned = (size_t)in0_p | (size_t)out0_p | row_bytes;
int word = aligned % 16 == 0 ? 16 : aligned % 4 == 0 ? 4 : 1;
size_t row_words = row_bytes / word;
int per_row = (int)((row_words + {_THREADS} - 1) / {_THREADS});
if (per_row > {_BLOCKS_PER_ROW}) per_row = {_BLOCKS_PER_ROW};
dim3 grid(per_row, out_rows);
const char* x = (const char*)in0_p;
char* y = (char*)out0_p;
if (out_rows && row_words) {{
    if (word == 16) jla_gather_rows<uint4><<<grid, {_THREADS}>>>(x, in1_p, y, row_words, src_rows);
    else if (word == 4) jla_gather_rows<uint32_t><<<grid, {_THREADS}>>>(x, in1_p, y, row_words, src_rows);
    else jla_gather_rows<unsigned char><<<grid, {_THREADS}>>>(x, in1_p, y, row_words, src_rows);
}}
"""

_CPU_HEADER = "#include <cstring>\n"
_CPU_SRC = """
size_t row_bytes = in0->size / in0->shape[0];
for (int r = 0; r < out0->shape[0]; r++) {
    char* to = (char*)out0_p + (size_t)r * row_bytes;
    int src = in1_p[r];
    if (src >= 0 && src < in0->shape[0]) std::memcpy(to, (const char*)in0_p + (size_t)src * row_bytes, row_bytes);
    else std::memset(to, 0, row_bytes);  // as the CUDA source: a row out of range comes out zero
}
"""


def gather_rows(x, rows):
    """x[rows] along axis 0 (`jt.index_select(x, 0, rows)`, bit for bit) for int32 `rows`: the
    wide copy where `fused_kernels` allows the "gather" op, else Jittor's own index_select."""
    if rows.ndim != 1:
        raise ValueError(f"gather_rows: rows must be 1-d, got shape {list(rows.shape)}")
    if not wanted(x, "gather", exact=True) or x.ndim == 0 or x.shape[0] == 0:
        return jt.index_select(x, 0, rows)
    rows = rows.int32().stop_grad()
    y = jt.code([rows.shape[0], *x.shape[1:]], x.dtype, [x.stop_grad(), rows],
                cpu_header=_CPU_HEADER, cpu_src=_CPU_SRC,
                cuda_header=_CUDA_HEADER, cuda_src=_CUDA_SRC)
    # A whole-range slice is a getitem that shares y's memory (no copy). Jittor writes a setitem in
    # place only into the output of a getitem, setitem or broadcast; without it the decoding step's
    # write of the new token's key and value copied the whole cache again (843 ms per beam batch).
    return y[0:rows.shape[0]]
