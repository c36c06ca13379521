"""Drift attribution over N training steps: per-step error vs. accumulated drift.

Both training backends (torch_impl.train.TorchBackend, jittor_impl.train.JittorBackend) run the
same batches with the same learning rates. Per step, before and after the update, this records
what each backend fed its model (the data path), the loss, the learning rate its optimizer
holds, the gradient norm, every trainable weight and both AdamW moments, each compared with
alignment.compare.check_tensor (fixed rule: no float64 optimizer exists to scale by).

- mode "free": the two runs go their own way; differences accumulate (drift).
- mode "teacher": after each step, torch's weights and AdamW moments are copied into the
  Jittor twin, so every recorded difference is the error of that single step.

A step error that stays flat while the free drift grows is accumulation of rounding; a step
error that is large by itself points at the step (and the quantity: data, lr, exp_avg,
exp_avg_sq, param) where the twins compute something different. The optimizer state is read
and written only through the small adapters below, because issue 12 is unifying the two
optimizers' interface; today they use each backend's `optimizer_state()` /
`load_optimizer_state()` (names `exp_avg/<param>`, `exp_avg_sq/<param>`, `step/<param>`).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np

from backends import training_backend

from .compare import check_tensor

STEP_REL_TOL = 1e-5  # per-tensor relative L2; measured one-step errors are ~1e-7..1e-6 (see tests)


# ------------------------------------------------------------------ optimizer-state adapters
def optimizer_moments(backend) -> dict:
    """{param name: {"exp_avg": array, "exp_avg_sq": array, "step": int}} of a training backend."""
    out = {}
    for key, value in backend.optimizer_state().items():
        kind, name = key.split("/", 1)
        out.setdefault(name, {})[kind] = int(value) if kind == "step" else np.asarray(value)
    return out


def load_optimizer_moments(backend, moments: dict):
    """Write moments in `optimizer_moments`'s layout into a training backend."""
    arrays = {}
    for name, state in moments.items():
        arrays[f"exp_avg/{name}"] = np.asarray(state["exp_avg"], np.float32)
        arrays[f"exp_avg_sq/{name}"] = np.asarray(state["exp_avg_sq"], np.float32)
        arrays[f"step/{name}"] = np.array(state["step"], dtype=np.int64)
    backend.load_optimizer_state(arrays)


def optimizer_lrs(backend) -> list:
    """The learning rate of each parameter group, as the optimizer holds it now."""
    return [float(g["lr"]) for g in backend.optimizer.param_groups]


def fed_batch(backend, batch: dict) -> dict:
    """What the backend's data path hands its model for `batch`, as numpy."""
    return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v.numpy())
            for k, v in backend.to_device(batch).items()}


# ------------------------------------------------------------------------------- running
def backend_args(**overrides) -> argparse.Namespace:
    """The arguments a training backend reads, with gpt2_ft.py's defaults where it has them."""
    args = dict(device="cpu", random_seed=1, init_checkpoint=None, shared_dropout=False,
                attn="math", weight_decay=0.01, no_decay_bias=False, lr=1e-3, adam_beta1=0.9,
                adam_beta2=0.999, adam_epislon=1e-6, correct_bias=True, precision="fp32",
                compile=False)
    args.update(overrides)
    return argparse.Namespace(**args)


@dataclass
class DriftReport:
    mode: str
    steps: list = field(default_factory=list)  # one dict per step: losses, lrs, records

    def first_divergence(self):
        """(step, quantity, name) of the first failing record, in recording order, or None."""
        for step in self.steps:
            for r in step["records"]:
                if not r["passed"]:
                    quantity, _, name = r["name"].partition("/")
                    return {"step": step["step"], "quantity": quantity, "name": name}
        return None

    def worst_by_step(self, quantity: str) -> list:
        return [max([r["rel_l2"] or 0.0 for r in s["records"] if r["name"].startswith(quantity + "/")]
                    or [0.0]) for s in self.steps]


def run_drift(config, batches, lrs, mode="free", clip=0.0, label_smooth=0.0, args=None,
              rel_tol=STEP_REL_TOL, backends=None) -> DriftReport:
    """Train both backends on `batches` with learning rates `lrs` (one per step) and compare
    after every step. `backends`: an optional prepared (torch, jittor) pair (bug-planted)."""
    if mode not in ("free", "teacher"):
        raise ValueError(f"mode must be 'free' or 'teacher', got {mode!r}")
    args = args or backend_args()
    tb, jb = backends or (training_backend("torch")(config, args),
                          training_backend("jittor")(config, args))
    report = DriftReport(mode)
    for step, (batch, lr) in enumerate(zip(batches, lrs), start=1):
        records = []
        fed_t, fed_j = fed_batch(tb, batch), fed_batch(jb, batch)
        records += [check_tensor(f"data/{k}", fed_j.get(k), fed_t[k], rel_tol=0.0) for k in fed_t]
        losses, norms = [], []
        for b in (tb, jb):
            b.set_step(step)
            loss = b.forward_backward(batch, 1.0, label_smooth)
            norms.append(b.update(lr, clip))
            losses.append(loss)
        lt, lj = tb.fetch([losses[0], norms[0]]), jb.fetch([losses[1], norms[1]])
        lr_t, lr_j = optimizer_lrs(tb), optimizer_lrs(jb)
        records.append(check_tensor("lr/groups", np.array(lr_j), np.array(lr_t), rel_tol=0.0))
        mt, mj = optimizer_moments(tb), optimizer_moments(jb)
        for quantity in ("exp_avg", "exp_avg_sq"):
            for name in mt:
                records.append(check_tensor(f"{quantity}/{name}", mj.get(name, {}).get(quantity),
                                            mt[name][quantity], rel_tol=rel_tol))
        wt = {n: v for n, v in tb.state_numpy(lora_only=False).items() if n in tb.params}
        wj = jb.state_numpy(lora_only=False)
        records += [check_tensor(f"param/{n}", wj.get(n), wt[n], rel_tol=rel_tol) for n in wt]
        report.steps.append({"step": step, "loss": [lt[0], lj[0]], "grad_norm": [lt[1], lj[1]],
                             "lr": [lr_t, lr_j], "records": records})
        if mode == "teacher":
            jb.load_trainable(wt)
            load_optimizer_moments(jb, mt)
    return report
