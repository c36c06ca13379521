# framework: docstring lines 6-8
"""Batched beam search on the model's device, in PyTorch (twin: jittor_impl/beam.py).

Implements the spec of `shared/decode/beam_spec.py` for B queries x K beams at once: one forward over
the queries (right-padded to a width bucket, see `padded_query_width`), then one token per row
per step into a KV cache preallocated to that width + eval_len.
The per-step rules work on whole (rows, V) tensors: no Python loop over rows and no host sync.
Shapes stay fixed from step 1 on (histories are (rows, eval_len) with a validity mask rather
than growing), which is what keeps Jittor's kernel cache warm in the twin.
"""
import torch  # framework

from shared.decode.beam_spec import BeamSettings, length_divisor, padded_query_width
from shared.decode.decode_cache import SharedPrefixCache, check_cache, generated_width
from shared.model.peft_methods import input_positions, virtual_tokens

NEG_INF = float("-inf")
BLOCK = 1024  # candidates per block in `select_top_k`'s first pass


# --------------------------------------------------------------------------- selection
def top_k_small(scores, k):
    """The k best entries per row by (value desc, index asc), in that order: (values, index).

    topk alone may order equal values either way; here it only finds the k-th value, the kept
    set is then picked by unique integer keys, and the k kept are ranked pairwise.
    """
    n = scores.shape[1]
    kth = torch.topk(scores, k, dim=1).values[:, k - 1:k]  # framework
    level = (scores > kth).long() * 2 + (scores == kth).long()  # 2 above, 1 tied with kth  # framework
    key = level * n + (n - 1 - torch.arange(n, device=scores.device))[None, :]  # framework
    kept = torch.topk(key, k, dim=1).indices  # framework
    values = scores.gather(1, kept)
    ahead = (values[:, None, :] > values[:, :, None]) | (
        (values[:, None, :] == values[:, :, None]) & (kept[:, None, :] < kept[:, :, None]))
    rank = ahead.long().sum(2)  # how many kept entries go before each one  # framework
    order = torch.zeros_like(kept).scatter_(1, rank, kept)  # framework
    return scores.gather(1, order), order


def select_top_k(scores, k):
    """`top_k_small` over wide rows (K * V candidates) without sorting them all: the k best
    entries lie in the k blocks whose maxima rank best (same order), so rank blocks first."""
    rows, n = scores.shape
    n_blocks = -(-n // BLOCK)
    padded = torch.cat([scores, scores.new_full((rows, n_blocks * BLOCK - n), NEG_INF)], dim=1)  # framework
    blocks = padded.view(rows, n_blocks, BLOCK)
    _, best_blocks = top_k_small(blocks.max(dim=2).values, min(k, n_blocks))  # framework
    best_blocks = torch.sort(best_blocks, dim=1).values  # index order = flat index order  # framework
    pool = blocks.gather(1, best_blocks[:, :, None].expand(-1, -1, BLOCK)).view(rows, -1)  # framework
    pool_index = (best_blocks[:, :, None] * BLOCK
                  + torch.arange(BLOCK, device=scores.device)[None, None, :]).view(rows, -1)  # framework
    values, position = top_k_small(pool, k)
    return values, pool_index.gather(1, position)


# ---------------------------------------------------------------------------- the rules
def token_mask(tokens, valid, vocab_size):
    """(rows, V) bool: True where a valid entry of `tokens` (rows, L) names that token."""
    index = torch.where(valid, tokens, torch.full_like(tokens, vocab_size))  # spare column V  # framework
    mask = torch.zeros(tokens.shape[0], vocab_size + 1, dtype=torch.bool, device=tokens.device)  # framework
    return mask.scatter_(1, index, True)[:, :vocab_size]  # framework


def generated_token_mask(history, cur_len, vocab_size):
    """Tokens generated so far in each row (history columns < cur_len)."""
    columns = torch.arange(history.shape[1], device=history.device)[None, :]  # framework
    return token_mask(history, (columns < cur_len).expand_as(history), vocab_size)  # framework


def banned_ngram_mask(history, cur_len, n, vocab_size):
    """Tokens that would repeat an n-gram of the row's history (spec rule 2b)."""
    if cur_len < n:  # no complete n-gram in the history yet
        return torch.zeros(history.shape[0], vocab_size, dtype=torch.bool, device=history.device)  # framework
    width = history.shape[1] - n + 1  # n-gram start positions j in a full history
    starts = torch.arange(width, device=history.device)[None, :]  # framework
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
        logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)  # framework
    if cur_len < settings.min_length:
        logits = torch.where(eos_columns[None, :], torch.full_like(logits, NEG_INF), logits)  # framework
    n = settings.no_repeat_ngram_size
    if n > 0 and cur_len >= n:  # the spec's cur_len + 1 >= n, less a step that bans nothing
        banned = banned_ngram_mask(history, cur_len, n, vocab_size)
        logits = torch.where(banned, torch.full_like(logits, NEG_INF), logits)  # framework
    return logits


class BestCandidates:
    """Per query: best length-normalised score, whether one exists, and its sequence (rule 4)."""

    def __init__(self, batch, eval_len, length_penalty, device):  # framework
        self.length_penalty = length_penalty
        self.score = torch.full((batch,), NEG_INF, device=device)  # framework
        self.found = torch.zeros(batch, dtype=torch.bool, device=device)  # framework
        self.sequence = torch.zeros(batch, eval_len, dtype=torch.long, device=device)  # framework

    def offer(self, beam_scores, history, length, finished):
        """Offer the `finished` rows (B, K) as rule 4 does, in row order; return the beam
        scores with those rows set to -inf."""
        batch, beam = beam_scores.shape
        normalised = beam_scores.double() / length_divisor(length, self.length_penalty)  # framework
        score = torch.where(finished, normalised.float(), torch.full_like(beam_scores, NEG_INF))  # framework
        top = score.max(dim=1).values  # framework
        columns = torch.arange(beam, device=score.device)[None, :]  # framework
        first = torch.where(finished & (score == top[:, None]), columns,  # framework
                            torch.full_like(columns, beam)).min(dim=1).values  # framework
        better = finished.any(dim=1) & (torch.logical_not(self.found) | (top > self.score))
        rows = torch.arange(batch, device=score.device) * beam + first.clamp(max=beam - 1)  # framework
        self.sequence = torch.where(better[:, None], history[rows], self.sequence)  # framework
        self.score = torch.where(better, top, self.score)  # framework
        self.found = self.found | better
        return torch.where(finished, torch.full_like(beam_scores, NEG_INF), beam_scores)  # framework


# -------------------------------------------------------------------------------- cache
def pad_cache(presents, extra):
    """Grow each layer's (key, value) of length Tq by `extra` zero positions."""
    return [tuple(torch.cat([x, x.new_zeros(*x.shape[:2], extra, x.shape[3])], dim=2)  # framework
                  for x in layer) for layer in presents]


def reorder_cache(past, rows):  # framework: Jittor keeps the rows in place where it can
    return [tuple(x.index_select(0, rows) for x in layer) for layer in past]  # framework


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
    return torch.concat([x, zero_columns(x, width - x.shape[2])], dim=2)


def zero_columns(x, n):
    return x.new_zeros(x.shape[0], x.shape[1], n, x.shape[3])  # framework


def reorder_generated(past, rows, cur_len, prefix_masked, eval_len):
    """The shared-prefix cache after a selection: each row's generated keys and values from its
    source row (the columns filled so far only), widened to hold step `cur_len`'s token; the
    queries' keys and values are the same for every row of a query and stay where they are."""
    width = generated_width(cur_len, eval_len)
    columns = torch.arange(width, device=rows.device)[None, :].expand(rows.shape[0], width)  # framework
    masked = torch.concat([prefix_masked, columns > cur_len], dim=1).view(rows.shape[0], 1, 1, -1)
    for layer in past:
        layer.key = widen(layer.key.index_select(0, rows), width)  # framework
        layer.value = widen(layer.value.index_select(0, rows), width)  # framework
        layer.masked, layer.step = masked, cur_len
    return past


# --------------------------------------------------------------------------------- search
def beam_search(model, query, query_len, settings: BeamSettings, cache="per_row"):
    """Best sequences (B, eval_len) int64 for queries (B, Tq) right-padded, lengths (B,).

    `cache`: "per_row" (the exact path: every row holds its query's keys and values too, the
    model's own attention) or "shared_prefix" (shared/decode/decode_cache.py: less memory traffic, the
    math attention with its fp32 sums in another order, so a near-tie may rank otherwise)."""
    check_cache(cache)
    with torch.no_grad():
        return _beam_search(model, query, query_len, settings, cache)


def _beam_search(model, query, query_len, settings, cache):
    model.eval()
    device = next(model.parameters()).device  # framework
    query = torch.as_tensor(query, dtype=torch.long, device=device)  # framework
    query_len = torch.as_tensor(query_len, dtype=torch.long, device=device)  # framework
    batch, query_width = query.shape
    beam, eval_len, vocab_size = settings.beam, settings.eval_len, model.config.vocab_size
    settings.check_vocab(vocab_size)
    width = padded_query_width(query_width, eval_len, input_positions(model.config))
    query = torch.cat([query, query.new_zeros(batch, width - query_width)], dim=1)  # framework
    eos_columns = torch.zeros(vocab_size, dtype=torch.bool, device=device)  # framework
    eos_columns[list(settings.eos_token_ids)] = True
    queries = torch.arange(batch, device=device)  # framework

    logits, presents = model(query)  # one row per query until the first selection
    logits = logits[queries, query_len - 1]
    if cache == "per_row":
        past = pad_cache(presents, eval_len)
    else:
        past = shared_prefix_cache(presents, eval_len)
    row_len = query_len[:, None].expand(batch, beam).reshape(-1)
    virtual = virtual_tokens(model.config)  # a PEFT method's positions before the query's
    prefix_masked = torch.arange(virtual + width, device=device)[None, :] >= (row_len + virtual)[:, None]  # each row's padding  # framework
    beam_scores = torch.zeros(batch, 1, device=device)  # framework
    history = torch.zeros(batch, eval_len, dtype=torch.long, device=device)  # framework
    best = BestCandidates(batch, eval_len, settings.length_penalty, device)  # framework
    for cur_len in range(eval_len):
        scores = postprocess_scores(logits.float(), history, cur_len, settings, eos_columns)
        logprob = torch.log(torch.softmax(scores, dim=-1))  # framework
        rows_per_query = beam_scores.shape[1]
        next_scores = (beam_scores[:, :, None] + logprob.view(batch, rows_per_query, vocab_size))
        beam_scores, flat = select_top_k(next_scores.view(batch, -1), beam)
        source = (flat // vocab_size + queries[:, None] * rows_per_query).view(-1)
        token = (flat % vocab_size).view(-1)
        history = history.index_select(0, source)  # framework
        history[:, cur_len] = token
        beam_scores = best.offer(beam_scores, history, cur_len + 1,
                                 eos_columns[token].view(batch, beam))
        if cur_len + 1 < eval_len:  # the new tokens go at position query_len + cur_len
            if cache == "per_row":
                past = reorder_cache(past, source)  # framework
            else:
                past = reorder_generated(past, source, cur_len, prefix_masked, eval_len)
            logits, past = model(token[:, None], past=past, len_past=row_len + cur_len)
            logits = logits[:, -1]
    best.offer(beam_scores, history, eval_len, torch.ones_like(beam_scores, dtype=torch.bool))  # framework
    return best.sequence  # framework
