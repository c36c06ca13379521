"""PPO's bookkeeping (shared/train/ppo_math.py) against examples worked by hand."""
import numpy as np
import pytest

from shared.train.ppo_math import KLController, gae, penalized_rewards, whiten


def test_rewards_gae_and_returns_worked_by_hand():
    # two rollouts: 3 response tokens, and 2 (the third column is past its end)
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    logprobs = np.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    ref_logprobs = np.array([[-1.5, -2.0, -1.0], [-0.5, -1.0, -9.0]])
    rewards, kl = penalized_rewards([1.0, -2.0], logprobs, ref_logprobs, mask, kl_coef=0.1)
    # kl: row 0 = [0.5, 0, 0.5]; row 1 = [-0.5, 0, (masked)]
    np.testing.assert_allclose(kl, [[0.5, 0.0, 0.5], [-0.5, 0.0, 0.0]])
    # rewards: -0.1 * kl, the score added at the last token
    np.testing.assert_allclose(rewards, [[-0.05, 0.0, 0.95], [0.05, -2.0, 0.0]])
    values = np.array([[0.5, 0.25, 1.0], [1.0, -1.0, 7.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    # row 0, backwards: t=2: delta = 0.95 + 0.5*0 - 1.0 = -0.05, A = -0.05
    #   t=1: delta = 0 + 0.5*1.0 - 0.25 = 0.25,   A = 0.25 + 0.25*(-0.05) = 0.2375
    #   t=0: delta = -0.05 + 0.5*0.25 - 0.5 = -0.425, A = -0.425 + 0.25*0.2375 = -0.365625
    # row 1 (length 2; the value 7.0 past its end is never used):
    #   t=1: delta = -2.0 + 0 - (-1.0) = -1.0, A = -1.0
    #   t=0: delta = 0.05 + 0.5*(-1.0) - 1.0 = -1.45, A = -1.45 + 0.25*(-1.0) = -1.7
    np.testing.assert_allclose(advantages, [[-0.365625, 0.2375, -0.05], [-1.7, -1.0, 0.0]])
    np.testing.assert_allclose(returns, [[0.134375, 0.4875, 0.95], [-0.7, -2.0, 0.0]])


def test_gae_with_gamma_lam_one_is_the_reward_to_go_minus_the_value():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    mask = np.ones((3, 5))
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    to_go = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(returns, to_go)
    np.testing.assert_allclose(advantages, to_go - values)


def test_whiten_over_the_mask():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = np.array([[1, 1, 1], [1, 0, 0]])
    w = whiten(x, mask)
    kept = w[mask == 1]
    assert kept.mean() == pytest.approx(0.0, abs=1e-12)
    assert kept.std(ddof=1) == pytest.approx(1.0, rel=1e-6)
    assert (w[mask == 0] == 0).all()


def test_kl_controller_fixed_and_adaptive():
    assert KLController(0.2).update(5.0, 100) == 0.2
    adaptive = KLController(0.2, target=6.0, horizon=1000)
    # kl 12 -> error clipped to 0.2: 0.2 * (1 + 0.2 * 100 / 1000) = 0.204
    assert adaptive.update(12.0, 100) == pytest.approx(0.204)
    # kl 5.4 -> error -0.1: 0.204 * (1 - 0.1 * 100 / 1000) = 0.20196
    assert adaptive.update(5.4, 100) == pytest.approx(0.20196)
    restored = KLController(0.2, target=6.0, horizon=1000)
    restored.load_state(adaptive.state())
    assert restored.value == adaptive.value


@pytest.mark.parametrize("call,message", [
    (lambda: penalized_rewards([1.0], [[0.0]], [[0.0]], [[1]], -0.1), "kl_coef must be >= 0"),
    (lambda: penalized_rewards([1.0], [[0.0, 0.0]], [[0.0, 0.0]], [[0, 1]], 0.1), "prefix"),
    (lambda: penalized_rewards([1.0], [[0.0]], [[0.0]], [[0]], 0.1), "row 0 has no response"),
    (lambda: KLController(-1.0), "coefficient must be >= 0"),
    (lambda: gae([[0.0]], [[0.0]], [[1]], 1.5, 0.9), "gamma")])
def test_bad_settings_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
