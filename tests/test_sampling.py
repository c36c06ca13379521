"""shared/decode/sampling.py: filtering, the inverse-CDF draw and the sample streams, on known values."""
import math

import numpy as np
import pytest

from shared.decode.sampling import (SampleStreams, SamplingSettings, draw, filtered_probabilities,
                                    prompt_batch)

EOS = 4


class FixedDraw:
    """A generator stand-in whose uniform draws are given in advance."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


def test_temperature_zero_is_greedy_with_the_first_maximum():
    probs = filtered_probabilities([1.0, 3.0, 3.0, 0.0], SamplingSettings(temperature=0.0))
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("temperature, expected", [(1.0, [1 / 3, 2 / 3]), (0.5, [0.2, 0.8])])
def test_temperature_scales_the_logits(temperature, expected):
    probs = filtered_probabilities([0.0, math.log(2.0)], SamplingSettings(temperature=temperature))
    np.testing.assert_allclose(probs, expected)


def test_top_k_keeps_the_k_largest_and_breaks_ties_by_lower_id():
    probs = filtered_probabilities([0.0, 2.0, 1.0, 1.0], SamplingSettings(top_k=2))
    e = math.exp(1.0)
    np.testing.assert_allclose(probs, [0.0, e / (e + 1), 1 / (e + 1), 0.0])


@pytest.mark.parametrize("top_p, expected", [
    (0.7, [0.625, 0.375, 0.0, 0.0]),  # 0.5 + 0.3 reaches 0.7
    (0.5, [1.0, 0.0, 0.0, 0.0]),  # the most probable token alone reaches 0.5
    (0.1, [1.0, 0.0, 0.0, 0.0]),  # and always stays
    (1.0, [0.5, 0.3, 0.15, 0.05]),
])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    probs = filtered_probabilities(logits, SamplingSettings(top_p=top_p))
    np.testing.assert_allclose(probs, expected, atol=1e-12)


def test_top_k_then_top_p():
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    probs = filtered_probabilities(logits, SamplingSettings(top_k=3, top_p=0.6))
    np.testing.assert_allclose(probs, [4 / 7, 3 / 7, 0.0, 0.0])  # top-3 renormalised: 4/9, 3/9, 2/9


@pytest.mark.parametrize("u, token", [(0.0, 1), (0.1, 1), (0.3, 1), (0.59, 1), (0.6, 3),
                                      (0.999, 3)])
def test_draw_is_the_inverse_cdf(u, token):
    assert draw(FixedDraw(u), np.array([0.0, 0.6, 0.0, 0.4])) == token


def fake_logits(rows, favourite):
    """Row r strongly prefers token favourite[r]."""
    logits = np.full((rows, 5), -30.0)
    logits[np.arange(rows), favourite] = 0.0
    return logits


def test_streams_stop_at_eos_and_leave_it_out():
    streams = SampleStreams(SamplingSettings(max_new_tokens=10, eos_token_id=EOS), 0, 2)
    assert streams.step(fake_logits(2, [1, 2])).tolist() == [1, 2]
    assert streams.step(fake_logits(2, [EOS, 3])).tolist() == [EOS, 3]
    assert not streams.done
    assert streams.step(fake_logits(2, [0, EOS])).tolist() == [EOS, EOS]  # row 0 stays done
    assert streams.done and streams.tokens == [[1], [2, 3]]


def test_streams_stop_at_max_new_tokens():
    streams = SampleStreams(SamplingSettings(max_new_tokens=2, eos_token_id=EOS), 0, 1)
    streams.step(fake_logits(1, [1]))
    assert not streams.done
    streams.step(fake_logits(1, [2]))
    assert streams.done and streams.tokens == [[1, 2]]


def test_sample_i_does_not_depend_on_num_samples():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 3, 50))  # steps x rows x vocab
    runs = {}
    for num_samples in (1, 3):
        streams = SampleStreams(SamplingSettings(max_new_tokens=6, eos_token_id=49), 7, num_samples)
        for step in logits:
            streams.step(step[:num_samples])
        runs[num_samples] = streams.tokens
    assert runs[1][0] == runs[3][0]
    assert runs[3][0] != runs[3][1]  # different generators per sample


@pytest.mark.parametrize("kwargs, message", [
    (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_settings_reject_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**kwargs)


def test_prompt_batch_repeats_the_prompt_and_refuses_what_cannot_run():
    settings = SamplingSettings(max_new_tokens=5)
    batch = prompt_batch([3, 1, 4], settings, n_positions=7, num_samples=2)
    assert batch.dtype == np.int64 and batch.tolist() == [[3, 1, 4], [3, 1, 4]]
    with pytest.raises(ValueError, match="the prompt is empty"):
        prompt_batch([], settings, n_positions=7, num_samples=1)
    with pytest.raises(ValueError, match="prompt of 4 tokens \\+ max_new_tokens 5 exceeds the "
                                         "model's 7 positions"):
        prompt_batch([1, 2, 3, 4], settings, n_positions=7, num_samples=1)
