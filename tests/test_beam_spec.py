"""The numpy beam-search spec (shared/decode/beam_spec.py) on hand-made cases with known answers.

Vocabulary in the search cases: A=0, B=1, C=2, EOS=3; a "model" is a table giving the next-token
probabilities after the prefix's last token, so each expected output can be worked out by hand.
"""
import math

import numpy as np
import pytest

from shared.decode.beam_spec import (BeamSettings, BestCandidate, apply_repetition_penalty,
                                     banned_ngram_tokens, beam_search_reference, candidate_score,
                                     log_probabilities, padded_query_width, postprocess_logits,
                                     top_k_order)

A, B, C, EOS = 0, 1, 2, 3
UNIFORM = [0.25, 0.25, 0.25, 0.25]


def table_model(table):
    """next_logits_fn whose logits are log-probabilities looked up by the last token."""
    def next_logits(prefixes):
        return np.log(np.array([table.get(p[-1], UNIFORM) for p in prefixes], dtype=np.float32))
    return next_logits


def constant_logits(logits):
    def next_logits(prefixes):
        return np.tile(np.asarray(logits, dtype=np.float32), (len(prefixes), 1))
    return next_logits


def settings(**kwargs):
    base = dict(beam=1, eval_len=4, no_repeat_ngram_size=0, eos_token_ids=(EOS,))
    return BeamSettings(**{**base, **kwargs})


# ------------------------------------------------------------------------- n-gram banning
@pytest.mark.parametrize("history, n, banned", [
    ([5, 6, 5], 2, [6]),  # bigram (5, 6) seen; last token 5
    ([1, 2, 3, 1, 2], 3, [3]),  # trigram (1, 2, 3) seen; last two tokens (1, 2)
    ([1, 2, 1, 3, 1], 2, [2, 3]),  # every completion of the context is banned
    ([1, 2, 3, 1, 2], 2, [3]),  # only n-grams starting with the last token count
    ([1, 2], 3, []),  # cur_len + 1 >= n, but no complete trigram yet
    ([1], 3, []),  # cur_len + 1 < n: nothing to check
    ([], 2, []),
    ([4, 4, 7], 1, [4, 7]),  # n = 1: every generated token
    ([4, 4, 7], 0, []),  # n = 0: off
    ([9, 9, 9, 9], 4, [9]),  # overlapping repeats
])
def test_banned_ngram_tokens(history, n, banned):
    assert banned_ngram_tokens(history, n) == banned


# --------------------------------------------------------------------- repetition penalty
def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_once():
    logits = np.array([2.0, -2.0, 0.0, 1.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 2, 1], 2.0)  # token 1 twice: penalised once
    np.testing.assert_array_equal(out, [1.0, -4.0, 0.0, 1.0])
    np.testing.assert_array_equal(logits, [2.0, -2.0, 0.0, 1.0])  # input untouched
    np.testing.assert_array_equal(apply_repetition_penalty(logits, [0, 1], 1.0), logits)


def test_min_length_bans_every_eos_id_until_reached():
    s = settings(min_length=2, eos_token_ids=(EOS, B))
    logits = np.zeros(4, dtype=np.float32)
    assert np.isneginf(postprocess_logits(logits, [A], s)[[B, EOS]]).all()
    assert np.isfinite(postprocess_logits(logits, [A], s)[[A, C]]).all()
    assert np.isfinite(postprocess_logits(logits, [A, A], s)).all()


def test_postprocess_applies_the_penalty_before_the_bans():
    s = settings(repetition_penalty=2.0, no_repeat_ngram_size=2)
    out = postprocess_logits(np.array([4.0, -1.0, 3.0, 0.0], dtype=np.float32), [A, C, A], s)
    np.testing.assert_array_equal(out, [2.0, -1.0, -np.inf, 0.0])  # A halved, C completes (A, C)


def test_log_probabilities_are_log_of_softmax():
    out = log_probabilities(np.array([0.0, math.log(3.0), -np.inf], dtype=np.float32))
    np.testing.assert_allclose(out[:2], [math.log(0.25), math.log(0.75)], rtol=1e-6)
    assert out.dtype == np.float32 and np.isneginf(out[2])


# ---------------------------------------------------------------------------- selection
def test_top_k_order_breaks_ties_by_lower_index():
    scores = np.array([1.0, 3.0, 3.0, -np.inf, 3.0, -np.inf], dtype=np.float32)
    assert top_k_order(scores, 4).tolist() == [1, 2, 4, 0]
    assert top_k_order(scores, 6).tolist() == [1, 2, 4, 0, 3, 5]


# --------------------------------------------------------------------------- candidates
def test_candidate_score_length_penalty():
    assert candidate_score(-6.0, 3, 1.0) == pytest.approx(-2.0)
    assert candidate_score(-6.0, 3, 0.0) == pytest.approx(-6.0)
    assert candidate_score(-6.0, 3, 0.8) == pytest.approx(-6.0 / 3 ** 0.8, rel=1e-6)


def test_best_candidate_keeps_the_earliest_of_equal_scores():
    best = BestCandidate(eval_len=5, length_penalty=1.0)
    best.offer(-np.inf, [7])  # the first offer is taken even at -inf
    assert best.sequence.tolist() == [7, 0, 0, 0, 0]
    best.offer(-2.0, [1, 2])  # -1.0 per token
    best.offer(-2.0, [3, 4])  # equal: the earlier stays
    assert best.sequence.tolist() == [1, 2, 0, 0, 0]
    best.offer(-2.7, [5, 6, 8])  # -0.9: strictly better, longer
    assert best.sequence.tolist() == [5, 6, 8, 0, 0] and best.score == pytest.approx(-0.9)
    best.offer(-np.inf, [9, 9, 9])
    assert best.sequence.tolist() == [5, 6, 8, 0, 0]


# ------------------------------------------------------------------------- whole search
def test_first_step_expands_beam_zero_only():
    # After the query (ends in C) A is likelier than B, but only B leads to a likely ending.
    # Expanding all K identical rows at step 0 would keep A twice and never see B.
    model = table_model({C: [0.5, 0.4, 0.05, 0.05], A: UNIFORM, B: [0.0025, 0.0025, 0.005, 0.99]})
    out = beam_search_reference(model, [[C]], settings(beam=2, eval_len=3))
    assert out.tolist() == [[B, EOS, 0]]


@pytest.mark.parametrize("length_penalty, expected", [(0.0, [EOS, 0, 0]), (1.0, [A, EOS, 0])])
def test_length_penalty_decides_between_finished_sequences(length_penalty, expected):
    # [EOS] scores ln .45 = -0.80; [A, EOS] scores ln .5 + ln .6 = -1.20, i.e. -0.60 per token.
    model = table_model({C: [0.5, 0.04, 0.01, 0.45], A: [0.3, 0.09, 0.01, 0.6]})
    s = settings(beam=2, eval_len=3, length_penalty=length_penalty)
    assert beam_search_reference(model, [[C]], s).tolist() == [expected]


def test_unfinished_rows_are_candidates_at_the_end():
    model = constant_logits([2.0, 1.0, 0.0, -20.0])  # eos never wins
    out = beam_search_reference(model, [[C]], settings(beam=3, eval_len=3))
    assert out.tolist() == [[A, A, A]]


def test_no_repeat_ngram_in_search():
    model = constant_logits([3.0, 2.0, 1.0, -5.0])  # always prefers A, then B
    out = beam_search_reference(model, [[C]], settings(no_repeat_ngram_size=2))
    # step 2: (A, A) already seen after A -> A banned -> B; step 3: nothing starts with B.
    assert out.tolist() == [[A, A, B, A]]


@pytest.mark.parametrize("logits", [[2.0, 1.9, -1.0, -5.0], [-1.0, -1.2, -3.0, -9.0]])
def test_repetition_penalty_in_search(logits):
    out = beam_search_reference(constant_logits(logits), [[C]],
                                settings(repetition_penalty=1.3))
    assert out.tolist() == [[A, B, A, A]]  # penalised A loses to B once, then both are seen


def test_min_length_in_search():
    model = constant_logits([1.0, 0.0, 0.0, 5.0])  # eos is by far the likeliest
    out = beam_search_reference(model, [[C]], settings(min_length=2))
    assert out.tolist() == [[A, A, EOS, 0]]


def test_any_id_of_the_eos_list_finishes_a_row():
    model = constant_logits([0.0, 3.0, 1.0, -5.0])  # B is the likeliest token
    assert beam_search_reference(model, [[C]], settings(eos_token_ids=(EOS, B))).tolist() \
        == [[B, 0, 0, 0]]
    assert beam_search_reference(model, [[C]], settings()).tolist() == [[B, B, B, B]]


def test_queries_are_searched_independently():
    model = table_model({C: [0.1, 0.1, 0.1, 0.7], A: [0.1, 0.7, 0.1, 0.1]})
    both = beam_search_reference(model, [[C], [B, A]], settings(beam=2))
    alone = [beam_search_reference(model, [q], settings(beam=2))[0] for q in ([C], [B, A])]
    np.testing.assert_array_equal(both, np.stack(alone))


@pytest.mark.parametrize("kwargs, message", [
    (dict(beam=0), "beam"), (dict(eval_len=0), "eval_len"), (dict(min_length=-1), "min_length"),
    (dict(no_repeat_ngram_size=-1), "no_repeat"), (dict(repetition_penalty=0.0), "repetition"),
    (dict(eos_token_ids=()), "eos"),
])
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BeamSettings(**kwargs)


def test_settings_check_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        beam_search_reference(constant_logits([0.0] * 4), [[C]], settings(eos_token_ids=(50256,)))
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        beam_search_reference(constant_logits([0.0] * 4), [[C]], settings(beam=5))


def test_padded_query_width_rounds_up_within_the_positions():
    assert padded_query_width(31, 24, 1024) == 64
    assert padded_query_width(64, 24, 1024) == 64
    assert padded_query_width(65, 24, 1024) == 128
    assert padded_query_width(100, 24, 128) == 104  # capped by n_positions - eval_len
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        padded_query_width(105, 24, 128)
