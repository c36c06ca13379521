"""Preference tuning in PyTorch (twin: jittor_impl/preference.py, same structure): the reward
model's pairwise loss, DPO's loss, and their training backends for shared/train/trainer.py.

Batches are shared/text/preference_data.py's: 2B rows, the B chosen sequences, then the B
rejected ones. `RewardBackend` trains GPT-2 with a scalar head on the last real token
(classifier.py's GPT2Classifier with one output, its head `score`), loss
-log sigmoid(r_chosen - r_rejected - margin) averaged over pairs. `DPOBackend` trains the policy
(GPT2LMModel, LoRA or every weight) against a frozen reference built alike from the same
checkpoint and seed (the starting model), loss -log sigmoid(beta * ((pi_c - ref_c) -
(pi_r - ref_r))) with pi, ref the summed log-probabilities of the response tokens; at the first
step, where the policy is the reference, it is ln 2. Both hand the trainer their metrics
(implicit or predicted rewards of chosen and rejected, accuracy, margin) as device scalars.
For PPO: `GPT2WithValueHead` (logits and a value per position in one pass) and `ppo_losses`
(clipped policy and value losses from rollouts whose advantages and returns
shared/train/ppo_math.py computed once, on the host).
"""
import torch  # framework
import torch.nn.functional as F  # framework

from shared.model.classifier_params import reward_trains
from shared.model.value_head import init_value_head

from .classifier import ClassifierBackend
from .lora import mark_trainable
from .model import Conv1D, GPT2LMModel
from .ops import DEFAULT_ATTENTION, cross_entropy, matmul_transpose
from .train import TorchBackend  # framework


def log_sigmoid(x):
    """log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|)), written the same in both twins."""
    return 0.5 * (x - x.abs()) - (1.0 + (-x.abs()).exp()).log()


def pairwise_metrics(chosen, rejected, prefix):
    """Mean scores of the chosen and rejected rows, how often chosen wins, the mean margin."""
    return {f"{prefix}chosen": chosen.mean().detach(), f"{prefix}rejected": rejected.mean().detach(),
            f"{prefix}accuracy": (chosen > rejected).float().mean().detach(),
            f"{prefix}margin": (chosen - rejected).mean().detach()}


def reward_loss(rewards, margin=0.0):
    """Pairwise ranking loss of 2B rewards (chosen rows first) and its metrics."""
    half = rewards.shape[0] // 2
    chosen, rejected = rewards[:half], rewards[half:]
    loss = -log_sigmoid(chosen - rejected - margin).mean()
    return loss, pairwise_metrics(chosen, rejected, "reward_")


def token_logprobs(logits, target):
    """(R, T, V) logits -> (R, T) log-probabilities of the targets."""
    return -cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), 0.0).reshape(target.shape)


def dpo_loss(policy, reference, mask, beta):
    """DPO loss of 2B rows of token log-probabilities (chosen rows first) and its metrics; the
    log-ratios are taken token by token, then summed under `mask` (a difference of two sums of
    order 100 would lose digits to rounding)."""
    half = policy.shape[0] // 2
    rewards = beta * ((policy - reference) * mask).sum(dim=1)  # the implicit rewards
    chosen, rejected = rewards[:half], rewards[half:]
    loss = -log_sigmoid(chosen - rejected).mean()
    return loss, pairwise_metrics(chosen, rejected, "rewards_")


class RewardBackend(ClassifierBackend):
    """ClassifierBackend with one output (the reward) and the pairwise loss; `args.num_classes`
    is 1 and `args.trainable` picks the trained part as for classification, less the biases the
    pairwise loss cannot train (shared/model/classifier_params.PAIRWISE_INVARIANT)."""

    def batch_loss(self, data, label_smooth=0.0):
        rewards = self.forward(data["input"], data["length"]).reshape(-1)
        loss, self.metrics = reward_loss(rewards.float(), self.margin)
        return loss

    def build_model(self, config, args):
        self.margin = args.margin
        model = super().build_model(config, args)
        mark_trainable(model, lambda name: reward_trains(name, args.trainable, config.n_layer))
        return model


class DPOBackend(TorchBackend):  # framework
    """TorchBackend training the policy with the DPO loss against a frozen reference copy."""  # framework

    def build_model(self, config, args):
        self.beta = args.beta
        self.reference = super().build_model(config, args)
        mark_trainable(self.reference, lambda name: False)
        self.reference.set_attention(args.attn or DEFAULT_ATTENTION)
        self.reference.eval()
        self.reference.to(self.device)  # framework
        return super().build_model(config, args)

    def batch_loss(self, data, label_smooth=0.0):
        logits, _ = self.forward(data["input"])
        policy = token_logprobs(logits, data["target"])
        with torch.no_grad():
            ref_logits, _ = self.reference(data["input"])
            reference = token_logprobs(ref_logits, data["target"])
        loss, self.metrics = dpo_loss(policy, reference, data["mask"], self.beta)
        return loss


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def ppo_losses(logits, values, batch, clip_range, value_clip):
    """PPO's clipped policy loss and clipped value loss over the response tokens of rollouts
    (`batch`: target, mask, and old_logprobs, old_values, advantages, returns at the same
    positions, computed once by shared/train/ppo_math.py) and their metrics."""
    mask = batch["mask"]
    logprobs = token_logprobs(logits, batch["target"])
    ratio = (logprobs - batch["old_logprobs"]).exp()
    pg_losses = -batch["advantages"] * ratio
    pg_clipped = -batch["advantages"] * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy_loss = masked_mean(torch.maximum(pg_losses, pg_clipped), mask)
    values_clipped = batch["old_values"] + (values - batch["old_values"]).clamp(-value_clip, value_clip)
    vf_losses = (values - batch["returns"]) ** 2
    vf_clipped = (values_clipped - batch["returns"]) ** 2
    value_loss = 0.5 * masked_mean(torch.maximum(vf_losses, vf_clipped), mask)
    token_logp = F.log_softmax(logits.detach().float(), dim=-1)  # framework
    metrics = {"clip_fraction": masked_mean((pg_clipped > pg_losses).float(), mask).detach(),
               "value_clip_fraction": masked_mean(((values - batch["old_values"]).abs() > value_clip).float(), mask).detach(),
               "approx_kl": (0.5 * masked_mean((logprobs - batch["old_logprobs"]) ** 2, mask)).detach(),
               "entropy": masked_mean(-(token_logp.exp() * token_logp).sum(dim=-1), mask).detach()}
    return policy_loss, value_loss, metrics


class GPT2WithValueHead(GPT2LMModel):
    """GPT2LMModel + a value per position (shared/model/value_head.py) for PPO: one pass gives
    the tied head's logits and the values."""

    def __init__(self, config, seed=0):
        super().__init__(config, seed)
        self.v_head = Conv1D(config.n_embd, 1)
        self.load_state_numpy(init_value_head(config, seed))

    def forward(self, input_ids):
        hidden_states, _ = self.transformer(input_ids)
        logits = matmul_transpose(hidden_states, self.transformer.wte.weight)  # tied head
        return logits, self.v_head(hidden_states).reshape(hidden_states.shape[:2])
