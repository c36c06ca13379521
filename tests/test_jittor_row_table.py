"""Beam search's per-row cache read through a row table (jittor_impl/row_table.py) against the
reordered cache it stands for: the table's bookkeeping over a run of selections, the decoding
kernel reading through it (CPU source; marked gpu, CUDA) bit for bit against the same kernel on
the reordered cache, and whole beam searches with and without the table."""
from dataclasses import replace

import numpy as np
import pytest

from alignment.harness import jittor_on
from jittor_impl import beam, decode_attention, fused_kernels, row_table
from jittor_impl.runtime import jt
from shared.model.peft_methods import PeftSettings
from test_jittor_decode_attention import CONFIG, beam_sequences
from test_jittor_decode_attention import restore_mode  # noqa: F401 (autouse: mode and ops restored)


def _selections(rows, steps, seed):
    """A run of beam selections over `rows` rows: each step's source rows (two queries, rows of a
    query picked from that query's rows only) and the column every row writes (the query's length
    plus the step)."""
    rng = np.random.default_rng(seed)
    half = rows // 2
    start = np.where(np.arange(rows) < half, 3, 5).astype(np.int32)  # the queries' lengths
    for step in range(steps):
        source = np.concatenate([rng.integers(0, half, half), rng.integers(half, rows, rows - half)])
        yield source.astype(np.int32), start + step


def test_relinked_table_reads_as_the_reordered_cache_cpu():
    """From the first selection (one row per query into K) on, over 6 selections with writes,
    the table-read cache is the reordered one, every column; the K rows of a query read the
    query's keys from one row."""
    queries, beam_k, heads, width, d = 2, 3, 2, 12, 4
    rows = queries * beam_k
    rng = np.random.default_rng(0)
    prefill = rng.normal(size=(queries, heads, width, d)).astype(np.float32)
    prefill[:, :, 5:] = 0  # the queries' keys in the first columns, zeros beyond
    with jt.no_grad():
        cache = [(jt.array(prefill), jt.array(prefill))]
        for step, (source, column) in enumerate(_selections(rows, 6, seed=1)):
            if step == 0:  # each row continues its query's one row
                source = np.repeat(np.arange(queries), beam_k).astype(np.int32)
            reordered = (prefill if step == 0 else reordered)[source]
            new = rng.normal(size=(rows, heads, d)).astype(np.float32)
            reordered[np.arange(rows), :, column] = new
            cache = beam.reorder_cache(cache, jt.array(source), jt.array(column), in_place=True)
            cache[0].key[jt.arange(rows), :, jt.array(column), :] = jt.array(new)
            got_key, _ = row_table.materialised(cache[0])
            np.testing.assert_array_equal(got_key.numpy(), reordered)
            # column 0 holds a query key in every row: the first row of each query serves it
            np.testing.assert_array_equal(cache[0].rows_of.numpy()[:, 0], [0, 0, 0, 3, 3, 3])


def _attention_both_ways(rows, heads, width, d, seed):
    """The decoding kernel on a cache read through a random row table, and on that table's
    reordered cache."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(rows, heads, 1, d)).astype(np.float32) * 2
    k, v = (rng.normal(size=(rows, heads, width, d)).astype(np.float32) for _ in range(2))
    rows_of = rng.integers(0, rows, size=(rows, width)).astype(np.int32)
    lengths = rng.integers(1, width + 1, size=rows).astype(np.int32)
    with jt.no_grad():
        cache = row_table.RowTableCache(jt.array(k), jt.array(v), jt.array(rows_of))
        gathered_k, gathered_v = (x.numpy() for x in row_table.materialised(cache))
        np.testing.assert_array_equal(gathered_k, k[rows_of, :, np.arange(width)[None, :]].transpose(0, 2, 1, 3))
        args = [jt.array(q), cache.key, cache.value, jt.array(lengths)]
        linked = decode_attention.decode_attention(*args, 8.0, rows_of=cache.rows_of).numpy()
        plain = decode_attention.decode_attention(jt.array(q), jt.array(gathered_k), jt.array(gathered_v),
                                                  jt.array(lengths), 8.0).numpy()
    return linked, plain


@pytest.mark.parametrize("rows,heads,width,d", [(5, 3, 37, 8), (4, 2, 130, 64), (3, 2, 9, 12)])
def test_decode_attention_through_the_table_is_the_reordered_cpu(rows, heads, width, d):
    linked, plain = _attention_both_ways(rows, heads, width, d, seed=width)
    np.testing.assert_array_equal(linked, plain)


@pytest.mark.gpu
def test_decode_attention_through_the_table_is_the_reordered_cuda():
    with jittor_on("cuda"):
        linked, plain = _attention_both_ways(210, 16, 128, 64, seed=2)
    np.testing.assert_array_equal(linked, plain)


# the methods whose virtual positions come first in the cache: its columns move by their number
VIRTUAL = {"prefix": PeftSettings("prefix", num_virtual_tokens=4),
           "prompt": PeftSettings("prompt", num_virtual_tokens=3)}


def _beam_sequences(mode, in_place, monkeypatch, config=CONFIG):
    """test_jittor_decode_attention's search, the table taken (`in_place`) or not whatever
    `row_table.wanted` says; it must have been asked once, and say yes where the kernel runs."""
    wanted = row_table.wanted
    calls = []
    monkeypatch.setattr(row_table, "wanted", lambda *a: calls.append(wanted(*a)) or in_place)
    sequences = beam_sequences(mode, config)
    assert calls == [mode == "on" or (mode == "auto" and bool(jt.flags.use_cuda))]
    return sequences


def test_beam_search_same_through_the_table_cpu(monkeypatch):
    """With the decoding kernel on, a search that keeps the cache in place equals one that
    reorders it, and the path without the kernel."""
    through = _beam_sequences("on", True, monkeypatch)
    np.testing.assert_array_equal(through, _beam_sequences("on", False, monkeypatch))
    np.testing.assert_array_equal(through, _beam_sequences("off", False, monkeypatch))


@pytest.mark.parametrize("method", list(VIRTUAL))
def test_beam_search_same_through_the_table_after_virtual_positions_cpu(method, monkeypatch):
    config = replace(CONFIG, peft=VIRTUAL[method])
    through = _beam_sequences("on", True, monkeypatch, config)
    np.testing.assert_array_equal(through, _beam_sequences("on", False, monkeypatch, config))


def test_table_only_with_the_fused_attention():
    """"math" attention keeps the reference's formula, so its cache is reordered as before."""
    from jittor_impl.model import GPT2LMModel
    fused_kernels.set_fused_kernels("on")
    model = GPT2LMModel(CONFIG, seed=8)
    with jt.no_grad():
        past = [(jt.zeros((4, 4, 20, 16)), jt.zeros((4, 4, 20, 16)))]
        assert row_table.wanted(model, past)
        model.set_attention("math")
        assert not row_table.wanted(model, past)
        model.set_attention("sdpa")
        fused_kernels.set_fused_kernels("off")
        assert not row_table.wanted(model, past)
