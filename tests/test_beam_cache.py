"""The beam search's shared-prefix cache (shared/decode/decode_cache.py) against the per-row cache, the
exact path: the same decoding steps (queries of different lengths, beams reordered at random,
the generated part widened across a bucket boundary) give the same logits up to fp32 rounding,
in both backends. tests of whole searches: alignment/test_beam_alignment.py."""
import numpy as np
import pytest

from shared.decode.beam_spec import padded_query_width
from shared.model.config import GPT2Config
from shared.decode.decode_cache import GENERATED_BUCKET, check_cache, generated_width

CONFIG = GPT2Config(vocab_size=97, n_positions=128, n_ctx=128, n_embd=32, n_layer=2, n_head=4)
QUERY_LEN = np.array([5, 11, 2])
BEAM, STEPS = 3, GENERATED_BUCKET + 2  # the generated part grows from 16 to 32 columns


def decode_logits(backend, cache):
    """Logits of every decoding step, (STEPS, rows, V), with the cache layout `cache`."""
    rng = np.random.default_rng(1)
    batch, rows = len(QUERY_LEN), len(QUERY_LEN) * BEAM
    width = padded_query_width(int(QUERY_LEN.max()), STEPS + 1, CONFIG.n_positions)
    query = rng.integers(0, CONFIG.vocab_size, size=(batch, width))
    tokens = rng.integers(0, CONFIG.vocab_size, size=(STEPS, rows))
    sources = [np.repeat(np.arange(batch), BEAM)] + [  # beams move within their query only
        np.repeat(np.arange(batch) * BEAM, BEAM) + rng.integers(0, BEAM, size=rows)
        for _ in range(STEPS - 1)]
    if backend == "torch":
        import torch
        from torch_impl import beam
        from torch_impl.model import GPT2LMModel
        model, array = GPT2LMModel(CONFIG, seed=3).eval(), torch.from_numpy
        grad = torch.no_grad
    else:
        from jittor_impl import beam
        from jittor_impl.model import GPT2LMModel
        from jittor_impl.runtime import jt
        model, array = GPT2LMModel(CONFIG, seed=3), lambda x: jt.array(x).int32()
        model.eval()
        grad = jt.no_grad
    out = []
    with grad():
        _, presents = model(array(query))
        row_len = array(np.repeat(QUERY_LEN, BEAM))
        if cache == "per_row":
            past = beam.pad_cache(presents, STEPS + 1)
        else:
            past = beam.shared_prefix_cache(presents, STEPS + 1)
            prefix_masked = array(np.arange(width)[None, :] >= np.repeat(QUERY_LEN, BEAM)[:, None])
        for step in range(STEPS):
            source = array(sources[step])
            if cache == "per_row":
                past = beam.reorder_cache(past, source)
            else:
                past = beam.reorder_generated(past, source, step, prefix_masked, STEPS + 1)
            logits, past = model(array(tokens[step][:, None]), past=past, len_past=row_len + step)
            out.append(logits[:, -1].numpy())
    return np.stack(out)


@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_shared_prefix_cache_gives_the_per_row_caches_logits(backend):
    exact = decode_logits(backend, "per_row")
    fast = decode_logits(backend, "shared_prefix")
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)
    assert np.abs(exact[1:] - exact[:-1]).max() > 1e-2  # the steps do differ


def test_generated_width_rounds_up_to_the_bucket_within_eval_len():
    assert [generated_width(t, 64) for t in (0, 15, 16, 47, 62)] == [16, 16, 32, 48, 64]
    assert generated_width(18, 20) == 20
    check_cache("per_row")
    with pytest.raises(ValueError, match="cache must be one of"):
        check_cache("paged")
