"""The beam-search prediction file: one `{"id", "predict", "query_digest"}` JSON object per line.

`id` and `predict` are microsoft/LoRA's format (its gpt2_decode.py reads them and ignores other
keys). `query_digest` identifies the query the prediction continues, so that decoding can tell a
sample file made from another input file instead of pairing predictions with the wrong MRs: the
first 16 hex digits of the SHA-1 of the query's (the MR's) token ids as little-endian int32,
without a trailing end-of-text (`gpt2_encode.py --add_bos` appends one, the formatted file that
decoding re-encodes has none). It is taken over the whole context, before any cut to the query
length, so it does not depend on --seq_len or --eval_len.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from shared.text.tokenizer import EOT_ID

DIGEST_KEY = "query_digest"


def query_digest(context_ids) -> str:
    ids = list(context_ids)
    if ids and ids[-1] == EOT_ID:
        ids = ids[:-1]
    return hashlib.sha1(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()[:16]


def prediction_line(query_id: int, predict, context_ids) -> str:
    """One line of the prediction file, newline included."""
    return json.dumps({"id": int(query_id), "predict": list(predict),
                       DIGEST_KEY: query_digest(context_ids)}) + "\n"
