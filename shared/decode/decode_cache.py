"""The beam search's shared-prefix KV cache: one layer's keys and values, split by what rows share.

The K rows (beams) of a query share the query's keys and values, so those are held once per
query, (queries, head, width, head_dim), and a reorder of the beams never touches them; each
row's generated tokens are held apart, (rows, head, n, head_dim), rows = queries x K, query-major,
the token of step `step` at column `step`. A search reorders only that part, and only the
columns it has filled (torch_impl/beam.py, jittor_impl/beam.py); the models' attention reads it
(`_attn_shared_prefix` in */model.py). Backend-neutral: the fields hold either framework's arrays.
"""
from dataclasses import dataclass

CACHES = ("per_row", "shared_prefix")  # beam_search's `cache` switch; per_row: the exact path
GENERATED_BUCKET = 16  # the generated part grows by this many columns (few shapes for Jittor)


@dataclass
class SharedPrefixCache:
    prefix_key: object  # (queries, head, width, head_dim)
    prefix_value: object
    key: object  # (rows, head, n, head_dim), n > step
    value: object
    masked: object  # (rows, 1, 1, width + n) bool: keys the row must not see (shared by layers)
    step: int  # the column the next token's key and value are written to


def check_cache(cache: str):
    if cache not in CACHES:
        raise ValueError(f"beam search cache must be one of {CACHES}, got {cache!r}")


def generated_width(cur_len: int, eval_len: int) -> int:
    """Columns of the generated part at step `cur_len` (it holds steps 0..cur_len): rounded up
    to GENERATED_BUCKET, at most eval_len. Columns past cur_len are masked."""
    return min(-(-(cur_len + 1) // GENERATED_BUCKET) * GENERATED_BUCKET, eval_len)
