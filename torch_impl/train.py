"""The PyTorch side of training (twin: jittor_impl/train.py); the loop is shared/trainer.py.

A backend owns the model and optimizer on its device and does what depends on the framework:
forward/backward of a micro-batch, the optimizer update, evaluation losses, fetching values,
and the weights/optimizer state as numpy for backend-neutral checkpoints.
"""
import numpy as np
import torch

from shared.checkpoint import load_for_model
from shared.dropout import SharedDropout
from shared.seeding import step_seed
from shared.trainer import optimizer_groups

from .generate import generate
from .lora import mark_only_lora_as_trainable, set_shared_dropout
from .model import GPT2LMModel
from .optim import AdamW, grad_norm_and_clip, set_lr

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend:
    name = "torch"

    def __init__(self, config, args):
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but torch sees no CUDA GPU")
        self.device, self.seed = torch.device(args.device), args.random_seed
        self.config = config
        self.model = self.build_model(config, args)
        self.shared_dropout = SharedDropout(config.lora_dropout, args.random_seed) if args.shared_dropout else None
        set_shared_dropout(self.model, self.shared_dropout)
        self.model.set_attention(args.attn or "sdpa")
        self.model.to(self.device)
        # what forward passes run through: the model, or its torch.compile'd form
        self.forward = torch.compile(self.model) if getattr(args, "compile", False) else self.model
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        groups = optimizer_groups(list(self.params), args.weight_decay, args.no_decay_bias)
        self.optimizer = AdamW([{"params": [self.params[n] for n in names], "weight_decay": wd}
                                for names, wd in groups],
                               lr=args.lr, betas=(args.adam_beta1, args.adam_beta2),
                               eps=args.adam_epislon, weight_decay=args.weight_decay,
                               correct_bias=args.correct_bias)
        self.autocast_dtype = AUTOCAST_DTYPES.get(args.precision)
        self.scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None

    def build_model(self, config, args):
        """The model this backend trains, its trainable weights marked (other tasks override)."""
        model = GPT2LMModel(config, seed=args.random_seed)
        if args.init_checkpoint:
            model.load_weight(args.init_checkpoint)
        if config.lora_attn_dim > 0:
            mark_only_lora_as_trainable(model)
        return model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype is not None)

    def to_device(self, batch):
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
                for k, v in batch.items()}

    def set_step(self, step):
        torch.manual_seed(step_seed(self.seed, step))
        if self.shared_dropout is not None:
            self.shared_dropout.set_step(step)

    def forward_backward(self, batch, loss_scale, label_smooth):
        """Accumulate the gradients of one micro-batch; return its (unscaled) loss on device."""
        self.model.train()
        data = self.to_device(batch)
        with self.autocast():
            loss = self.batch_loss(data, label_smooth)
        scaled = loss * loss_scale
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach()

    def update(self, lr, clip):
        """Clip, step with learning rate `lr`, zero the gradients; return the gradient norm."""
        set_lr(self.optimizer, lr)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = grad_norm_and_clip(self.params.values(), clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @torch.no_grad()
    def eval_loss(self, batch):
        self.model.eval()
        data = self.to_device(batch)
        with self.autocast():
            loss = self.batch_loss(data)
        return loss

    def batch_loss(self, data, label_smooth=0.0):
        """The loss of one batch on device (the language-model loss; other tasks override)."""
        _, loss = self.forward(data["input"], lm_labels=data["target"], lm_mask=data["mask"],
                               label_smooth=label_smooth)
        return loss

    def fetch(self, values):
        """Device scalars -> Python floats in one transfer (the loop's only host sync)."""
        if not values:
            return []
        return torch.stack([v.float() for v in values]).cpu().tolist()

    def sample(self, prompt_ids, settings, seed, num_samples=1):
        """Sampled continuations from the model being trained (shared/sampling.py's draws)."""
        return generate(self.model, prompt_ids, settings, seed, num_samples)

    def is_out_of_memory(self, exc):
        return isinstance(exc, torch.cuda.OutOfMemoryError)

    # ------------------------------------------------------------- state for checkpoints
    def state_numpy(self, lora_only):
        return self.model.state_dict_numpy(lora_only=lora_only)

    def load_trainable(self, state):
        self.model.load_state_numpy(state)

    def load_trainable_checkpoint(self, path):
        """Resume: the trainable weights saved at `path`, checked against the model."""
        self.load_trainable(load_for_model(path, self.config, base_loaded=True))

    def optimizer_state(self):
        out = {}
        for name, p in self.params.items():
            state = self.optimizer.state.get(p)
            if state:
                out[f"exp_avg/{name}"] = state["exp_avg"].cpu().numpy()
                out[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].cpu().numpy()
                out[f"step/{name}"] = np.array(state["step"], dtype=np.int64)
        return out

    def load_optimizer_state(self, arrays):
        for name, p in self.params.items():
            if f"step/{name}" in arrays:
                self.optimizer.state[p] = {
                    "step": int(arrays[f"step/{name}"]),
                    "exp_avg": torch.from_numpy(arrays[f"exp_avg/{name}"]).to(self.device),
                    "exp_avg_sq": torch.from_numpy(arrays[f"exp_avg_sq/{name}"]).to(self.device)}
