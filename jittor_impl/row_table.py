"""Beam search's per-row cache read through a row table instead of reordered (Jittor only: it
needs decode_attention.py's kernel, which reads each key where the table says).

After every selection the per-row cache is reordered: each row's keys and values are copied from
the row it continues, 48 arrays of [rows, heads, width, head_dim] a step at gpt2.md, 715 ms of a
batch's 3,256 ms of kernels on an H200 at the memory's speed (logs/benchmark.md). But a selection
only re-points rows: the keys a row has written stay valid for every row that continues it. So
after the first step (which expands one row per query into K, a real copy) nothing is copied:
`rows_of` (rows, width) int32 says, for each row and column, which row of the cache holds that
key, one table for all layers. A selection gathers the table (rows x width integers), and each
row then writes its new token's key and value in its own row, at a column no row has written yet
(every row of a query is at the same column), so no key another row still reads is overwritten.
The K rows of a query start as copies of one row, so they all read that one for the query's keys
(the copies stay unread): on the GPU the K blocks of a query, which run together, can then find
those keys in the L2 cache rather than read K copies from memory.
The attention reads the same keys and values as from a reordered cache, in the same order, so
the results are the reordered cache's bit for bit (tests/test_jittor_row_table.py).
"""
from dataclasses import dataclass

from . import decode_attention
from .runtime import jt


@dataclass
class RowTableCache:
    key: object  # (rows, heads, width, head_dim): row r holds the keys row r wrote
    value: object
    rows_of: object  # (rows, width) int32, shared by all layers: the row holding key j of row n


def wanted(model, past) -> bool:
    """Whether beam search should keep the per-row cache `past` ([(key, value)] per layer) in
    place: every layer's attention is the fused one ("sdpa"; "math" is the reference's formula,
    kept as written), which on this cache is the float32 decoding kernel."""
    fused = all(block.attn.attn_impl == "sdpa" for block in model.transformer.h)
    return fused and decode_attention.takes(past[0][0])


def link(past, rows, column):
    """The per-row cache just after the first selection, as `RowTableCache`s. Row n there is a
    copy of row `rows[n]` of the cache before it, so rows that copied the same row are the same:
    each reads the first of them (the K beams of a query read one row, which the GPU's L2 cache
    can then serve K times), except at `column[n]`, where it writes its next token in its own row."""
    n, width = rows.shape[0], past[0][0].shape[2]
    own = jt.arange(n).int32()
    same = rows[None, :] == rows[:, None]
    first = jt.ternary(same, own[None, :].expand(n, n), jt.full((n, n), n, dtype="int32")).min(dim=1)
    rows_of = _writes_in_own_row(first[:, None].expand(n, width).clone(), column)
    return [RowTableCache(key, value, rows_of) for key, value in past]


def relink(past, rows, column):
    """The cache after a selection: row n continues row `rows[n]`, whose keys it reads where
    that row read them, and writes its next token at `column[n]` in its own row."""
    rows_of = _writes_in_own_row(jt.index_select(past[0].rows_of, 0, rows), column)
    for layer in past:
        layer.rows_of = rows_of
    return past


def _writes_in_own_row(rows_of, column):
    """`rows_of` with row n's entry at `column[n]` pointing to row n: where it writes its next
    token (no row another row reads from is written there)."""
    own = jt.arange(rows_of.shape[0]).int32()
    rows_of[own, column] = own
    return rows_of


def attend(cache, query, key, value, len_past, divisor):
    """One new token per row (query, key, value (rows, heads, 1, head_dim)) at column `len_past`
    of its own row, then its attention over the keys the table points to."""
    own = jt.arange(key.shape[0])
    cache.key[own, :, len_past, :] = key.squeeze(2)
    cache.value[own, :, len_past, :] = value.squeeze(2)
    return decode_attention.decode_attention(query, cache.key, cache.value, len_past + 1, divisor,
                                             rows_of=cache.rows_of)


def materialised(cache):
    """(key, value) as a reordered cache would hold them: row n, column j from row rows_of[n, j]
    (for tests and checks; the search never copies)."""
    rows, heads, width, head_dim = cache.key.shape
    index = ["@e0(i0,i2)", "i1", "i2", "i3"]
    return tuple(x.reindex([rows, heads, width, head_dim], index, extras=[cache.rows_of])
                 for x in (cache.key, cache.value))
