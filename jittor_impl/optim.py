"""microsoft/LoRA's AdamW and global-norm clipping, in Jittor (twin: torch_impl/optim.py).

The reference AdamW (examples/NLG/src/optimizer.py) differs from jittor.optim.AdamW: bias
correction is optional (`correct_bias`), and weight decay is applied after the Adam update, to
the updated weights: p -= step_size * m / (sqrt(v) + eps); p -= lr * weight_decay * p.
Gradients accumulate in the optimizer (`backward(loss)` per micro-batch, then `step()`).
"""
import math

from .runtime import jt


class AdamW(jt.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                 correct_bias=True):
        super().__init__(params, lr)
        for group in self.param_groups:
            for key, value in dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                   correct_bias=correct_bias).items():
                group.setdefault(key, value)
            group["step"] = [0 for _ in group["params"]]
            group["exp_avg"] = [jt.zeros(p.shape, "float32").stop_grad() for p in group["params"]]
            group["exp_avg_sq"] = [jt.zeros(p.shape, "float32").stop_grad() for p in group["params"]]

    def step(self, loss=None, retain_graph=False):
        self.pre_step(loss, retain_graph)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for i, (p, g) in enumerate(zip(group["params"], group["grads"])):
                if p.is_stop_grad():
                    continue
                exp_avg, exp_avg_sq = group["exp_avg"][i], group["exp_avg_sq"][i]
                grad = g.float32()
                group["step"][i] += 1
                exp_avg.update(exp_avg * beta1 + grad * (1.0 - beta1))
                exp_avg_sq.update(exp_avg_sq * beta2 + grad * grad * (1.0 - beta2))
                denom = exp_avg_sq.sqrt() + group["eps"]
                step_size = group["lr"]
                if group["correct_bias"]:
                    step_size *= math.sqrt(1.0 - beta2 ** group["step"][i]) / (1.0 - beta1 ** group["step"][i])
                new_p = p - step_size * exp_avg / denom
                if group["weight_decay"] > 0.0:
                    new_p = new_p - group["lr"] * group["weight_decay"] * new_p
                p.update(new_p.cast(p.dtype))
        self.post_step()


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def grad_norm_and_clip(optimizer, max_norm):
    """Global L2 norm of the accumulated gradients (a lazy scalar); clips when max_norm > 0."""
    grads = [g for group in optimizer.param_groups
             for p, g in zip(group["params"], group["grads"]) if not p.is_stop_grad()]
    total_norm = jt.sqrt(sum((g.float32() * g.float32()).sum() for g in grads))
    if max_norm > 0:
        clip_coef = jt.minimum(max_norm / (total_norm + 1e-6), 1.0)
        for g in grads:
            g.update(g * clip_coef.cast(g.dtype))
    return total_norm
