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
For PPO: `GPT2WithValueHead` (logits and a value per position in one pass), `ppo_losses`
(clipped policy and value losses from rollouts whose advantages and returns
shared/train/ppo_math.py computed once, on the host) and `PPOBackend`, whose rollouts
shared/tasks/ppo_task.py gathers (sampled responses, their log-probabilities under the policy and
the frozen reference, values, the reward model's scores) and whose steps are PPO's minibatch
updates.
"""
import torch  # framework
import torch.nn.functional as F  # framework

from shared.model.classifier_params import reward_trains
from shared.model.params import is_lora_name
from shared.model.value_head import init_value_head, is_value_head_name, split_value_head

from .classifier import ClassifierBackend, GPT2Classifier
from .sampler import generate
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


class LanguageModelView:
    """A GPT2WithValueHead seen as the plain language model generate.py drives (logits and the
    KV cache, no values); it shares the model's weights."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def eval(self):
        self.model.eval()

    def parameters(self):
        return self.model.parameters()

    def __call__(self, input_ids, past=None):
        return GPT2LMModel.forward(self.model, input_ids, past=past)  # framework


class PPOBackend(TorchBackend):  # framework
    """The training backend of the policy (GPT2WithValueHead: its LoRA matrices, or with
    --lora_dim 0 every weight, and the value head) with PPO's losses (+ `--ptx_coef` times the
    language-model loss of SFT rows) on the minibatches shared/tasks/ppo_task.py builds; a
    frozen reference copy of the starting model and the reward model (`reward_config` and
    `reward_checkpoint`, set by the task) serve its rollouts. Held-out batches (preference
    pairs) are scored by the policy's loss on their chosen responses."""

    reward_config = reward_checkpoint = None

    def build_model(self, config, args):
        self.clip_range, self.value_clip = args.clip_range, args.value_clip
        self.vf_coef, self.ptx_coef = args.vf_coef, args.ptx_coef
        # the log-probabilities of the distribution the rollouts were sampled from (as TRL)
        self.temperature = args.temperature or 1.0
        self.reference = super().build_model(config, args)
        mark_trainable(self.reference, lambda name: False)
        self.reference.set_attention(args.attn or DEFAULT_ATTENTION)
        self.reference.eval()
        self.reference.to(self.device)  # framework
        self.reward_model = GPT2Classifier(self.reward_config, 1).load_weight(self.reward_checkpoint)
        mark_trainable(self.reward_model, lambda name: False)
        self.reward_model.set_attention(args.attn or DEFAULT_ATTENTION)
        self.reward_model.eval()
        self.reward_model.to(self.device)  # framework
        model = GPT2WithValueHead(config, seed=args.random_seed)
        if args.init_checkpoint:
            model.load_weight(args.init_checkpoint)
        if config.lora_attn_dim > 0:  # else the whole policy trains, the reference stays
            mark_trainable(model, lambda name: is_lora_name(name) or is_value_head_name(name))
        return model

    def batch_loss(self, data, label_smooth=0.0):
        if "advantages" not in data:  # held-out pairs: the chosen responses' loss
            half = data["input"].shape[0] // 2
            logits, _ = self.forward(data["input"][:half])
            return masked_mean(-token_logprobs(logits.float(), data["target"][:half]), data["mask"][:half])
        logits, values = self.forward(data["input"])
        policy_loss, value_loss, metrics = ppo_losses(logits.float() / self.temperature, values.float(), data, self.clip_range, self.value_clip)
        loss = policy_loss + self.vf_coef * value_loss
        metrics.update(policy_loss=policy_loss.detach(), value_loss=value_loss.detach(),
                       returns=masked_mean(data["returns"], data["mask"]))
        if self.ptx_coef > 0:
            ptx_logits, _ = self.forward(data["ptx_input"])
            ptx_loss = masked_mean(-token_logprobs(ptx_logits.float(), data["ptx_target"]), data["ptx_mask"])
            loss = loss + self.ptx_coef * ptx_loss
            metrics["ptx_loss"] = ptx_loss.detach()
        for name in data:
            if name.startswith("rollout_"):  # the rollout's statistics, logged with each step
                metrics[name[len("rollout_"):]] = data[name].sum()
        self.metrics = metrics
        return loss

    def sample(self, prompt_ids, settings, seed, num_samples=1, reference=False):
        """Sampled responses of the policy (or the frozen reference) to one prompt."""
        return generate(self.reference if reference else LanguageModelView(self.model), prompt_ids, settings, seed, num_samples)

    def rollout_values(self, batch):
        """(policy log-probabilities, reference log-probabilities, values) at every position of
        `batch` (input, target), as float32 numpy arrays; log-probabilities of the logits over
        --temperature, the distribution the sampler drew from."""
        self.model.eval()
        data = self.to_device(batch)
        with torch.no_grad(), self.autocast():
            logits, values = self.model(data["input"])
            ref_logits, _ = self.reference(data["input"])
            out = (token_logprobs(logits.float() / self.temperature, data["target"]),
                   token_logprobs(ref_logits.float() / self.temperature, data["target"]), values.float())
        return [x.cpu().numpy() for x in out]  # framework

    def score(self, batch):
        """The reward model's score of each row of `batch` (input, length), numpy."""
        data = self.to_device(batch)
        with torch.no_grad(), self.autocast():
            rewards = self.reward_model(data["input"], data["length"]).reshape(-1).float()
        return rewards.cpu().numpy()  # framework

    def state_numpy(self, lora_only):
        """Checkpoints hold the policy alone (a GPT-2 (+ LoRA) that generate.py and chat.py
        load); the value head travels in the trainer state (shared/tasks/ppo_task.py)."""
        return {n: v for n, v in super().state_numpy(lora_only).items() if not is_value_head_name(n)}

    def value_head_numpy(self):
        return {n: v for n, v in self.model.state_dict_numpy().items() if is_value_head_name(n)}

    def load_value_head(self, state, source):
        """The value head of `state` (checked: whole, shaped for the model) into the model."""
        self.model.load_state_numpy(split_value_head(state, self.config, source)[1])
