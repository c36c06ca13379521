"""Learning-rate schedules of microsoft/LoRA's `optimizer.py`, as pure functions of the step.

Both backends ask `lr_at(step)` before each update instead of keeping scheduler objects, so the
schedule is one piece of code and a resumed run needs no scheduler state. As in the reference,
the scheduler advances once per micro-batch: the update made after micro-batch k (1-based) uses
`lr * multiplier(k - 1)`, so with warmup the very first update has learning rate 0.
"""
import math

SCHEDULES = ("linear", "constant", "cosine")


def multiplier(scheduler: str, step: int, warmup_step: int, max_step: int) -> float:
    if scheduler == "linear":  # get_linear_schedule_with_warmup
        if step < warmup_step:
            return float(step) / float(max(1, warmup_step))
        return max(0.0, float(max_step - step) / float(max(1, max_step - warmup_step)))
    if scheduler == "constant":  # get_constant_schedule_with_warmup
        if step < warmup_step:
            return float(step) / float(max(1.0, warmup_step))
        return 1.0
    if scheduler == "cosine":  # CosineAnnealingWarmupRestarts(min_lr=0, alpha=0)
        if step < warmup_step:
            return float(step) / float(warmup_step)
        progress = min(step, max_step) / max_step
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULES}")


def lr_at(base_lr: float, scheduler: str, micro_step: int, warmup_step: int, max_step: int) -> float:
    """Learning rate of the update made after micro-batch `micro_step` (1-based)."""
    return base_lr * multiplier(scheduler, micro_step - 1, warmup_step, max_step)
