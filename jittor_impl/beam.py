# framework: docstring lines 6-10
"""Batched beam search on the model's device, in Jittor (twin: torch_impl/beam.py).

Implements the spec of `shared/decode/beam_spec.py` for B queries x K beams at once: one forward over
the queries (right-padded to a width bucket, see `padded_query_width`), then one token per row
per step into a KV cache preallocated to that width + eval_len.
The per-step rules work on whole (rows, V) tensors: no Python loop over rows. Shapes stay
fixed from step 1 on (histories are (rows, eval_len) with a validity mask rather than growing),
so Jittor compiles each step's kernels once. Jittor is lazy: the loop state is synced once per
step, otherwise the graph would keep every step's cache alive until the end.
Index tensors are int32 here (Jittor's default index type; keys below stay under 3 * K * V).
"""
from shared.decode.beam_spec import BeamSettings, length_divisor, padded_query_width
from shared.decode.decode_cache import SharedPrefixCache, check_cache, generated_width
from shared.model.peft_methods import input_positions, virtual_tokens

from . import row_table  # framework
from .row_gather import gather_rows  # framework
from .runtime import jt  # framework

NEG_INF = float("-inf")
BLOCK = 1024  # candidates per block in `select_top_k`'s first pass


# --------------------------------------------------------------------------- selection
def top_k_small(scores, k):
    """The k best entries per row by (value desc, index asc), in that order: (values, index).

    topk alone may order equal values either way; here it only finds the k-th value, the kept
    set is then picked by unique integer keys, and the k kept are ranked pairwise.
    """
    n = scores.shape[1]
    kth = jt.topk(scores, k, dim=1)[0][:, k - 1:k]  # framework
    level = (scores > kth).int32() * 2 + (scores == kth).int32()  # 2 above, 1 tied with kth  # framework
    key = level * n + (n - 1 - jt.arange(n).int32())[None, :]  # framework
    kept = jt.topk(key, k, dim=1)[1].int32()  # framework
    values = scores.gather(1, kept)
    ahead = (values[:, None, :] > values[:, :, None]) | (
        (values[:, None, :] == values[:, :, None]) & (kept[:, None, :] < kept[:, :, None]))
    rank = ahead.int32().sum(2)  # how many kept entries go before each one  # framework
    order = jt.zeros_like(kept).scatter(1, rank, kept)  # framework
    return scores.gather(1, order), order


def select_top_k(scores, k):
    """`top_k_small` over wide rows (K * V candidates) without sorting them all: the k best
    entries lie in the k blocks whose maxima rank best (same order), so rank blocks first."""
    rows, n = scores.shape
    n_blocks = -(-n // BLOCK)
    padded = jt.concat([scores, jt.full((rows, n_blocks * BLOCK - n), NEG_INF)], dim=1)  # framework
    blocks = padded.reshape(rows, n_blocks, BLOCK)
    _, best_blocks = top_k_small(blocks.max(dim=2), min(k, n_blocks))  # framework
    best_blocks = jt.argsort(best_blocks, dim=1)[1]  # index order = flat index order  # framework
    pool = blocks.gather(1, best_blocks[:, :, None].expand(rows, best_blocks.shape[1], BLOCK))  # framework
    pool = pool.reshape(rows, -1)  # framework
    pool_index = (best_blocks[:, :, None] * BLOCK
                  + jt.arange(BLOCK).int32()[None, None, :]).reshape(rows, -1)  # framework
    values, position = top_k_small(pool, k)
    return values, pool_index.gather(1, position)


# ---------------------------------------------------------------------------- the rules
def token_mask(tokens, valid, vocab_size):
    """(rows, V) bool: True where a valid entry of `tokens` (rows, L) names that token."""
    index = jt.ternary(valid, tokens, jt.full_like(tokens, vocab_size))  # spare column V  # framework
    mask = jt.zeros((tokens.shape[0], vocab_size + 1), dtype="bool")  # framework
    return mask.scatter(1, index, jt.array(True))[:, :vocab_size]  # framework


def generated_token_mask(history, cur_len, vocab_size):
    """Tokens generated so far in each row (history columns < cur_len)."""
    columns = jt.arange(history.shape[1]).int32()[None, :]  # framework
    return token_mask(history, (columns < cur_len).expand(history.shape), vocab_size)  # framework


def banned_ngram_mask(history, cur_len, n, vocab_size):
    """Tokens that would repeat an n-gram of the row's history (spec rule 2b)."""
    if cur_len < n:  # no complete n-gram in the history yet
        return jt.zeros((history.shape[0], vocab_size), dtype="bool")  # framework
    width = history.shape[1] - n + 1  # n-gram start positions j in a full history
    starts = jt.arange(width).int32()[None, :]  # framework
    match = (starts + n <= cur_len).expand(history.shape[0], width)
    for t in range(n - 1):
        last = history[:, cur_len - n + 1 + t:cur_len - n + 2 + t]
        match = match & (history[:, t:t + width] == last)
    return token_mask(history[:, n - 1:n - 1 + width], match, vocab_size)


def postprocess_scores(logits, history, cur_len, settings: BeamSettings, eos_columns):
    """Spec rule 2b on all rows: repetition penalty, min_length, no-repeat n-gram."""
    vocab_size = logits.shape[1]
    if settings.repetition_penalty != 1.0 and cur_len > 0:
        p = settings.repetition_penalty
        seen = generated_token_mask(history, cur_len, vocab_size)
        logits = jt.ternary(seen, jt.ternary(logits < 0, logits * p, logits / p), logits)  # framework
    if cur_len < settings.min_length:
        logits = jt.ternary(eos_columns[None, :], jt.full_like(logits, NEG_INF), logits)  # framework
    n = settings.no_repeat_ngram_size
    if n > 0 and cur_len >= n:  # the spec's cur_len + 1 >= n, less a step that bans nothing
        banned = banned_ngram_mask(history, cur_len, n, vocab_size)
        logits = jt.ternary(banned, jt.full_like(logits, NEG_INF), logits)  # framework
    return logits


class BestCandidates:
    """Per query: best length-normalised score, whether one exists, and its sequence (rule 4)."""

    def __init__(self, batch, eval_len, length_penalty):  # framework
        self.length_penalty = length_penalty
        self.score = jt.full((batch,), NEG_INF)  # framework
        self.found = jt.zeros((batch,), dtype="bool")  # framework
        self.sequence = jt.zeros((batch, eval_len), dtype="int32")  # framework

    def offer(self, beam_scores, history, length, finished):
        """Offer the `finished` rows (B, K) as rule 4 does, in row order; return the beam
        scores with those rows set to -inf."""
        batch, beam = beam_scores.shape
        normalised = beam_scores.float64() / length_divisor(length, self.length_penalty)  # framework
        normalised.sync()  # fused with the cast below, Jittor would divide in float32 after all  # framework
        score = jt.ternary(finished, normalised.float32(), jt.full_like(beam_scores, NEG_INF))  # framework
        top = score.max(dim=1)  # framework
        columns = jt.arange(beam).int32()[None, :].expand(batch, beam)  # framework
        first = jt.ternary(finished & (score == top[:, None]), columns,  # framework
                           jt.full_like(columns, beam)).min(dim=1)  # framework
        better = finished.any(dim=1) & (jt.logical_not(self.found) | (top > self.score))
        rows = jt.arange(batch).int32() * beam + first.clamp(max_v=beam - 1)  # framework
        self.sequence = jt.ternary(better[:, None], history[rows], self.sequence)  # framework
        self.score = jt.ternary(better, top, self.score)  # framework
        self.found = self.found | better
        return jt.ternary(finished, jt.full_like(beam_scores, NEG_INF), beam_scores)  # framework

    def state(self):  # framework
        return [self.score, self.found, self.sequence]  # framework


# -------------------------------------------------------------------------------- cache
def pad_cache(presents, extra):
    """Grow each layer's (key, value) of length Tq by `extra` zero positions."""
    return [tuple(jt.concat([x, jt.zeros((x.shape[0], x.shape[1], extra, x.shape[3]),  # framework
                                         dtype=x.dtype)], dim=2)  # framework
                  for x in layer) for layer in presents]


def reorder_cache(past, rows, column=None, in_place=False):  # framework
    # framework: docstring lines 1-3
    """`in_place` (row_table.wanted): after the first selection, which expands one row per query
    into K, the rows are not copied but re-pointed (row_table.py); the next token of row n goes at
    `column[n]`."""
    if isinstance(past[0], row_table.RowTableCache):  # framework
        return row_table.relink(past, rows, column)  # framework
    past = [tuple(gather_rows(x, rows) for x in layer) for layer in past]  # framework
    return row_table.link(past, rows, column) if in_place else past  # framework


def cache_state(past):  # framework
    """The cache arrays a step changes (the loop syncs them)."""  # framework
    if isinstance(past[0], SharedPrefixCache):  # framework
        return [x for layer in past for x in (layer.prefix_key, layer.prefix_value, layer.key,  # framework
                                              layer.value, layer.masked)]  # framework
    if isinstance(past[0], row_table.RowTableCache):  # framework
        return [x for layer in past for x in (layer.key, layer.value)] + [past[0].rows_of]  # framework
    return [x for kv in past for x in kv]  # framework


def shared_prefix_cache(presents, eval_len):
    """Every layer's `SharedPrefixCache` before step 0: the queries' keys and values as the first
    forward left them, an empty generated part with one row per query."""
    width = generated_width(0, eval_len)
    return [SharedPrefixCache(key, value, zero_columns(key, width), zero_columns(value, width),
                              None, 0) for key, value in presents]


def widen(x, width):
    """x (rows, head, n, head_dim) with zero columns added up to `width`."""
    if x.shape[2] >= width:
        return x
    return jt.concat([x, zero_columns(x, width - x.shape[2])], dim=2)


def zero_columns(x, n):
    return jt.zeros((x.shape[0], x.shape[1], n, x.shape[3]), dtype=x.dtype)  # framework


def reorder_generated(past, rows, cur_len, prefix_masked, eval_len):
    """The shared-prefix cache after a selection: each row's generated keys and values from its
    source row (the columns filled so far only), widened to hold step `cur_len`'s token; the
    queries' keys and values are the same for every row of a query and stay where they are."""
    width = generated_width(cur_len, eval_len)
    columns = jt.arange(width).int32()[None, :].expand(rows.shape[0], width)  # framework
    masked = jt.concat([prefix_masked, columns > cur_len], dim=1).reshape(rows.shape[0], 1, 1, -1)
    for layer in past:
        layer.key = widen(gather_rows(layer.key, rows), width)  # framework
        layer.value = widen(gather_rows(layer.value, rows), width)  # framework
        layer.masked, layer.step = masked, cur_len
    return past


# --------------------------------------------------------------------------------- search
def beam_search(model, query, query_len, settings: BeamSettings, cache="per_row"):
    """Best sequences (B, eval_len) int64 for queries (B, Tq) right-padded, lengths (B,).

    `cache`: "per_row" (the exact path: every row holds its query's keys and values too, the
    model's own attention) or "shared_prefix" (shared/decode/decode_cache.py: less memory traffic, the
    math attention with its fp32 sums in another order, so a near-tie may rank otherwise)."""
    check_cache(cache)
    with jt.no_grad():
        return _beam_search(model, query, query_len, settings, cache)


def _beam_search(model, query, query_len, settings, cache):
    model.eval()
    query = jt.array(query).int32()  # framework
    query_len = jt.array(query_len).int32()  # framework
    batch, query_width = query.shape
    beam, eval_len, vocab_size = settings.beam, settings.eval_len, model.config.vocab_size
    settings.check_vocab(vocab_size)
    width = padded_query_width(query_width, eval_len, input_positions(model.config))
    query = jt.concat([query, jt.zeros((batch, width - query_width), dtype="int32")], dim=1)  # framework
    eos_columns = jt.zeros((vocab_size,), dtype="bool")  # framework
    eos_columns[list(settings.eos_token_ids)] = True
    queries = jt.arange(batch).int32()  # framework

    logits, presents = model(query)  # one row per query until the first selection
    logits = logits[queries, query_len - 1]
    if cache == "per_row":
        past = pad_cache(presents, eval_len)
        in_place = row_table.wanted(model, past)  # framework: read through a row table, not reordered
    else:
        past = shared_prefix_cache(presents, eval_len)
    row_len = query_len[:, None].expand(batch, beam).reshape(-1)
    virtual = virtual_tokens(model.config)  # a PEFT method's positions before the query's
    prefix_masked = jt.arange(virtual + width).int32()[None, :] >= (row_len + virtual)[:, None]  # each row's padding  # framework
    beam_scores = jt.zeros((batch, 1))  # framework
    history = jt.zeros((batch, eval_len), dtype="int32")  # framework
    best = BestCandidates(batch, eval_len, settings.length_penalty)  # framework
    for cur_len in range(eval_len):
        scores = postprocess_scores(logits.float32(), history, cur_len, settings, eos_columns)
        logprob = jt.log(jt.nn.softmax(scores, dim=-1))  # framework
        rows_per_query = beam_scores.shape[1]
        next_scores = (beam_scores[:, :, None] + logprob.reshape(batch, rows_per_query, vocab_size))
        beam_scores, flat = select_top_k(next_scores.reshape(batch, -1), beam)
        source = (flat // vocab_size + queries[:, None] * rows_per_query).reshape(-1)
        token = (flat % vocab_size).reshape(-1)
        history = jt.index_select(history, 0, source)  # framework
        history[:, cur_len] = token
        beam_scores = best.offer(beam_scores, history, cur_len + 1,
                                 eos_columns[token].reshape(batch, beam))
        if cur_len + 1 < eval_len:  # the new tokens go at position query_len + cur_len
            if cache == "per_row":
                past = reorder_cache(past, source, row_len + virtual + cur_len, in_place)  # framework
            else:
                past = reorder_generated(past, source, cur_len, prefix_masked, eval_len)
            logits, past = model(token[:, None], past=past, len_past=row_len + cur_len)
            logits = logits[:, -1]
        jt.sync([logits, beam_scores, history] + best.state() + cache_state(past))  # framework
    best.offer(beam_scores, history, eval_len, jt.ones_like(beam_scores).bool())  # framework
    return best.sequence.int64()  # framework
