"""PPO's bookkeeping for RLHF, once for both backends (numpy, float64): the per-token rewards
with their KL penalty, generalized advantage estimation, whitening, and the KL coefficient.

Arrays are (B, T) over the response tokens of B rollouts, left-aligned: column t is the t-th
generated token, `mask` 1 for t < the response's length (the tokens after a response's
<|endoftext|> are 0). A backend computes the log-probabilities and values of a rollout once;
everything here then runs on the host, so both backends update from identical advantages and
returns (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; the
formulas of TRL's PPOTrainer):
  reward_t   = -kl_coef * (logprob_t - ref_logprob_t), + the reward model's score at the last
               token of the response
  delta_t    = reward_t + gamma * V_{t+1} - V_t        (V past the last token: 0)
  A_t        = delta_t + gamma * lam * A_{t+1}         (A past the last token: 0)
  return_t   = A_t + V_t
"""
from __future__ import annotations

import numpy as np


def _checked(mask, *arrays):
    mask = np.asarray(mask, dtype=np.float64)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (B, T), got shape {mask.shape}")
    out = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        if a.shape != mask.shape:
            raise ValueError(f"arrays must match the mask's shape {mask.shape}, got {a.shape}")
        out.append(a)
    lengths = mask.sum(axis=1).astype(int)
    expected = (np.arange(mask.shape[1])[None, :] < lengths[:, None]).astype(np.float64)
    if not np.array_equal(mask, expected):
        raise ValueError("mask must be 1 on a prefix of each row (left-aligned responses), "
                         "0 after it")
    return mask, lengths, out


def penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """(per-token rewards, per-token KL estimates logprob - ref_logprob) of B rollouts:
    -kl_coef * KL at each token, plus `scores[b]` at the last token of row b."""
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    mask, lengths, (logprobs, ref_logprobs) = _checked(mask, logprobs, ref_logprobs)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape != (mask.shape[0],):
        raise ValueError(f"need one score per row ({mask.shape[0]}), got {scores.shape}")
    if (lengths == 0).any():
        raise ValueError(f"row {int(np.argmin(lengths))} has no response token")
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rewards[np.arange(mask.shape[0]), lengths - 1] += scores
    return rewards, kl


def gae(rewards, values, mask, gamma, lam):
    """(advantages, returns) by generalized advantage estimation (module docstring), 0 where
    `mask` is 0."""
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"need 0 <= gamma, lam <= 1, got {gamma}, {lam}")
    mask, _, (rewards, values) = _checked(mask, rewards, values)
    values = values * mask
    advantages = np.zeros_like(rewards)
    next_value = np.zeros(rewards.shape[0])
    next_advantage = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def whiten(values, mask, shift_mean=True):
    """Zero mean (unless not `shift_mean`) and unit variance over the masked entries."""
    mask = np.asarray(mask, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    n = mask.sum()
    if n < 2:
        raise ValueError(f"whitening needs at least 2 masked entries, got {int(n)}")
    mean = (values * mask).sum() / n
    var = (((values - mean) ** 2) * mask).sum() / (n - 1)  # unbiased, as TRL's masked_var
    out = (values - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out += mean
    return out * mask


class KLController:
    """The KL coefficient: fixed (`target` None), or adaptive (Ziegler et al.): after each
    batch, coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon."""

    def __init__(self, init_coef, target=None, horizon=10000):
        if init_coef < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {init_coef}")
        if target is not None and not target > 0:
            raise ValueError(f"the KL target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"the KL horizon must be > 0, got {horizon}")
        self.value, self.target, self.horizon = float(init_coef), target, horizon

    def update(self, current_kl, n_steps):
        if self.target is not None:
            error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state(self) -> dict:
        return {"value": self.value}

    def load_state(self, state):
        self.value = float(state["value"])
