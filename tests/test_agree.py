"""shared.runtime.differences.agree: the one place that decides whether two results agree within a tolerance."""
import math

import numpy as np

from shared.runtime.differences import agree, difference


def test_elementwise_rule_is_numpy_allclose_in_float64():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(4, 5))
    for scale in (1e-7, 1e-5, 1e-3, 1e-1):
        a = b + rng.normal(size=b.shape) * scale
        for atol, rtol in ((1e-5, 0.0), (0.0, 1e-4), (1e-6, 1e-3)):
            assert agree(a, b, atol=atol, rtol=rtol) == np.allclose(a, b, atol=atol, rtol=rtol)


def test_the_bound_is_inclusive_and_relative_to_the_reference():
    assert agree([1.5], [1.0], atol=0.5)
    assert not agree([1.5], [1.0], atol=0.49)
    assert agree([2.0], [1.0], rtol=1.0)  # |a-b| <= rtol * |b|, b the reference
    assert not agree([1.0], [2.0], rtol=0.4)


def test_nan_and_infinities_fail_unless_equal_nonfinite():
    assert not agree([math.nan], [math.nan], atol=1.0)
    assert not agree([math.inf], [math.inf], atol=1.0)
    assert agree([math.nan, math.inf, 1.0], [math.nan, math.inf, 1.0005], atol=1e-3,
                 equal_nonfinite=True)
    assert not agree([math.nan], [1.0], atol=1e9, equal_nonfinite=True)
    assert not agree([math.inf], [1.0], atol=1e9, equal_nonfinite=True)


def test_shapes_must_match():
    assert not agree(np.zeros((2, 3)), np.zeros((3, 2)), atol=1.0)
    assert not agree(np.zeros(3), np.zeros(1), atol=1.0)


def test_relative_l2_rule():
    b = np.array([3.0, 4.0])
    a = b + np.array([0.05, 0.0])  # ||a-b|| / ||b|| = 0.01
    assert math.isclose(difference(a, b).rel_l2, 0.01)
    assert agree(a, b, rel_l2=0.0101) and not agree(a, b, rel_l2=0.0099)
    assert agree(1.0 + 1e-6, 1.0, rel_l2=1e-5) and not agree(1.0 + 1e-4, 1.0, rel_l2=1e-5)
    assert not agree([math.nan, 1.0], [1.0, 1.0], rel_l2=1e9)
