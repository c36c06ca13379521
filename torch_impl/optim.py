# framework: docstring line 3
"""microsoft/LoRA's AdamW and global-norm clipping, in PyTorch (twin: jittor_impl/optim.py).

The reference AdamW (examples/NLG/src/optimizer.py) differs from torch.optim.AdamW: bias
correction is optional (`correct_bias`), and weight decay is applied after the Adam update, to
the updated weights: p -= step_size * m / (sqrt(v) + eps); p -= lr * weight_decay * p.
Both twins keep one state dict per parameter ({"step", "exp_avg", "exp_avg_sq"}, `param_state`)
and save it under the same backend-neutral names (`state_numpy`), so either can resume the other.
"""
import math

import numpy as np
import torch  # framework


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 correct_bias=True):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias)
        super().__init__(params, defaults)  # framework

    def param_state(self, p):
        """The moments of `p` ({"step", "exp_avg", "exp_avg_sq"}; empty before its first update)."""
        return self.state[p]  # framework

    def grads_of(self, group):
        """(parameter, gradient) for the parameters of `group` that have a gradient."""
        return [(p, p.grad) for p in group["params"] if p.grad is not None]  # framework

    def grads(self):
        return [grad for group in self.param_groups for _, grad in self.grads_of(group)]

    @torch.no_grad()  # framework
    def step(self, closure=None):  # framework
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p, grad in self.grads_of(group):
                state = self.param_state(p)
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)  # framework
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)  # framework
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = grad.float()
                state["step"] += 1
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)  # framework
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)  # framework
                denom = exp_avg_sq.sqrt().add_(group["eps"])  # framework
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size *= math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                p.addcdiv_(exp_avg, denom, value=-step_size)  # framework
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])  # framework

    # ------------------------------------------------------------- state for checkpoints
    def state_numpy(self, named_params):
        """{"exp_avg/<name>", "exp_avg_sq/<name>", "step/<name>": array} for every parameter of
        `named_params` ({name: parameter}) updated so far."""
        out = {}
        for name, p in named_params.items():
            state = self.param_state(p)
            if state:
                out[f"exp_avg/{name}"] = state["exp_avg"].cpu().numpy()  # framework
                out[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].cpu().numpy()  # framework
                out[f"step/{name}"] = np.array(state["step"], dtype=np.int64)
        return out

    def load_state_numpy(self, named_params, arrays):
        for name, p in named_params.items():
            if f"step/{name}" in arrays:
                state = self.param_state(p)
                state["step"] = int(arrays[f"step/{name}"])
                state["exp_avg"] = torch.from_numpy(arrays[f"exp_avg/{name}"]).to(p.device)  # framework
                state["exp_avg_sq"] = torch.from_numpy(arrays[f"exp_avg_sq/{name}"]).to(p.device)  # framework


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm_and_clip(optimizer, max_norm):
    """Global L2 norm of the gradients (a device scalar, no host sync); clips when max_norm > 0."""  # framework
    grads = optimizer.grads()
    total_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))  # framework
    if max_norm > 0:
        clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)  # framework
        for g in grads:
            g.mul_(clip_coef.to(g.dtype))  # framework
    return total_norm
