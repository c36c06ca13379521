# framework: docstring lines 3, 8
"""microsoft/LoRA's AdamW and global-norm clipping, in Jittor (twin: torch_impl/optim.py).

The reference AdamW (examples/NLG/src/optimizer.py) differs from jittor.optim.AdamW: bias
correction is optional (`correct_bias`), and weight decay is applied after the Adam update, to
the updated weights: p -= step_size * m / (sqrt(v) + eps); p -= lr * weight_decay * p.
Both twins keep one state dict per parameter ({"step", "exp_avg", "exp_avg_sq"}, `param_state`)
and save it under the same backend-neutral names (`state_numpy`), so either can resume the other.
Gradients accumulate in the optimizer (`backward(loss)` per micro-batch, then `step()`).
"""
import math

import numpy as np

from .runtime import jt  # framework


class AdamW(jt.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 correct_bias=True):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias)
        super().__init__(params, lr)  # framework
        for group in self.param_groups:  # framework
            for key, value in defaults.items():  # framework
                group.setdefault(key, value)  # framework
        self.state = {}  # id(parameter) -> its moments, as torch.optim.Optimizer.state  # framework

    def param_state(self, p):
        """The moments of `p` ({"step", "exp_avg", "exp_avg_sq"}; empty before its first update)."""
        return self.state.setdefault(id(p), {})  # framework

    def grads_of(self, group):
        """(parameter, gradient) for the parameters of `group` that have a gradient."""
        return [(p, g) for p, g in zip(group["params"], group["grads"]) if not p.is_stop_grad()]  # framework

    def grads(self):
        return [grad for group in self.param_groups for _, grad in self.grads_of(group)]

    def step(self, loss=None, retain_graph=False):  # framework
        self.pre_step(loss, retain_graph)  # framework
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p, grad in self.grads_of(group):
                state = self.param_state(p)
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = jt.zeros(p.shape, "float32").stop_grad()  # framework
                    state["exp_avg_sq"] = jt.zeros(p.shape, "float32").stop_grad()  # framework
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                grad = grad.float32()
                state["step"] += 1
                exp_avg.update(exp_avg * beta1 + grad * (1.0 - beta1))  # framework
                exp_avg_sq.update(exp_avg_sq * beta2 + grad * grad * (1.0 - beta2))  # framework
                denom = exp_avg_sq.sqrt() + group["eps"]  # framework
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size *= math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
                new_p = p - step_size * exp_avg / denom  # framework
                if group["weight_decay"] > 0.0:
                    new_p = new_p - group["lr"] * group["weight_decay"] * new_p  # framework
                p.update(new_p.cast(p.dtype))  # framework
        self.post_step()  # framework

    # ------------------------------------------------------------- state for checkpoints
    def state_numpy(self, named_params):
        """{"exp_avg/<name>", "exp_avg_sq/<name>", "step/<name>": array} for every parameter of
        `named_params` ({name: parameter}) updated so far."""
        out = {}
        for name, p in named_params.items():
            state = self.param_state(p)
            if state:
                out[f"exp_avg/{name}"] = state["exp_avg"].numpy()  # framework
                out[f"exp_avg_sq/{name}"] = state["exp_avg_sq"].numpy()  # framework
                out[f"step/{name}"] = np.array(state["step"], dtype=np.int64)
        return out

    def load_state_numpy(self, named_params, arrays):
        for name, p in named_params.items():
            if f"step/{name}" in arrays:
                state = self.param_state(p)
                state["step"] = int(arrays[f"step/{name}"])
                state["exp_avg"] = jt.array(arrays[f"exp_avg/{name}"]).stop_grad()  # framework
                state["exp_avg_sq"] = jt.array(arrays[f"exp_avg_sq/{name}"]).stop_grad()  # framework


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm_and_clip(optimizer, max_norm):
    """Global L2 norm of the accumulated gradients (a lazy scalar); clips when max_norm > 0."""  # framework
    grads = optimizer.grads()
    total_norm = jt.sqrt(sum((g.float32() * g.float32()).sum() for g in grads))  # framework
    if max_norm > 0:
        clip_coef = jt.minimum(max_norm / (total_norm + 1e-6), 1.0)  # framework
        for g in grads:
            g.update(g * clip_coef.cast(g.dtype))  # framework
    return total_norm
