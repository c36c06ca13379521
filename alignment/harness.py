"""Helpers of the alignment suite: twin models from one seed, numpy views of both, and a recorder.

Every comparison between two arrays goes through `compare`, which measures the largest absolute
and relative differences, records them with the tolerance and device in the session recorder
`RECORDER`, and only then asserts, so a report lists failing comparisons too. The recorder is
written to `$ALIGNMENT_REPORT_DIR/alignment_report.{json,md}` at the end of a pytest session
(see alignment/conftest.py), with the versions and devices it ran on.
"""
from __future__ import annotations

import contextlib
import os
import platform
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch

from shared.runtime.atomic import write_json, write_text
from shared.runtime.differences import agree, difference
from shared.model.config import GPT2Config
from shared.runtime.environment import gpu_name, versions
from shared.model.params import init_state_dict
from shared.pipeline.report import markdown_table

# Tiny shapes keep the suite fast on 2 CPU cores; the vocabulary stays GPT-2's 50257 because
# the tied output head over the real vocabulary is part of what must align.
TINY_SHAPE = dict(n_embd=64, n_layer=2, n_head=4, n_positions=64, n_ctx=64)

# Every cross-backend test runs on the CPU; the CUDA variant is skipped without a GPU (the root
# conftest.py marks every test parametrised with device "cuda" as `gpu`).
DEVICES = ("cpu", "cuda")


def tiny_config(lora_dim: int = 0, **overrides) -> GPT2Config:
    """A tiny GPT-2 (LoRA rank `lora_dim`, alpha 128 as the reference, LoRA dropout 0)."""
    return GPT2Config(**{**TINY_SHAPE, "lora_attn_dim": lora_dim, **overrides})


def randomize_lora_B(state: dict, seed: int, std: float = 0.02) -> dict:
    """Give `lora_B` non-zero values (it starts at zero), so tests see the LoRA path at work."""
    out = OrderedDict(state)
    for name in (n for n in state if n.endswith("lora_B")):
        rng = np.random.default_rng([int(seed), 7919, zlib.crc32(name.encode())])
        out[name] = rng.normal(0.0, std, size=state[name].shape).astype(np.float32)
    return out


def seeded_state(config: GPT2Config, seed: int = 0, lora_nonzero: bool = True) -> dict:
    """Canonical initial weights; with `lora_nonzero`, lora_B is drawn non-zero so the LoRA path
    changes the output (at its zero init it contributes nothing and could hide a bug)."""
    state = init_state_dict(config, seed)
    return randomize_lora_B(state, seed) if lora_nonzero and config.lora_attn_dim else state


# ------------------------------------------------------------------------- building models
@contextlib.contextmanager
def jittor_on(device: str):
    """Run Jittor on `device` inside the block and always fall back to the CPU afterwards, so
    a failing CUDA test cannot leave later tests on the GPU."""
    from jittor_impl import runtime
    runtime.use_device(device)
    try:
        yield runtime.jt
    finally:
        runtime.use_device("cpu")


def build_torch(config: GPT2Config, state: dict, device: str = "cpu", attention: str = "sdpa"):
    from torch_impl.model import GPT2LMModel
    model = GPT2LMModel(config)
    model.load_state_numpy(state)
    model.set_attention(attention)
    return model.to(device).eval()


def build_jittor(config: GPT2Config, state: dict):
    """A Jittor model holding `state`; build it inside `jittor_on(device)` for that device."""
    from jittor_impl.model import GPT2LMModel
    model = GPT2LMModel(config)
    model.load_state_numpy(state)
    model.eval()
    return model


def build_pair(config: GPT2Config, seed: int = 0, device: str = "cpu", lora_nonzero: bool = True):
    """(torch model, jittor model, numpy state) holding identical weights; call inside
    `jittor_on(device)`."""
    state = seeded_state(config, seed, lora_nonzero)
    return build_torch(config, state, device), build_jittor(config, state), state


# ------------------------------------------------------------------------ running, as numpy
def to_numpy(x) -> np.ndarray:
    """A torch tensor, jittor Var or array as a float numpy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    if hasattr(x, "numpy"):  # a jittor Var
        return x.numpy()
    return np.asarray(x)


def torch_inputs(device: str, *arrays):
    """int arrays become int64 tensors, float arrays float32 tensors; None stays None."""
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
        elif np.issubdtype(np.asarray(a).dtype, np.integer):
            out.append(torch.as_tensor(np.asarray(a, dtype=np.int64), device=device))
        else:
            out.append(torch.as_tensor(np.asarray(a, dtype=np.float32), device=device))
    return out if len(out) > 1 else out[0]


def jittor_inputs(*arrays):
    from jittor_impl.runtime import jt
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
        elif np.issubdtype(np.asarray(a).dtype, np.integer):
            out.append(jt.array(np.asarray(a, dtype=np.int64)))
        else:
            out.append(jt.array(np.asarray(a, dtype=np.float32)))
    return out if len(out) > 1 else out[0]


def torch_forward(model, input_ids, device="cpu", labels=None, mask=None, label_smooth=0.0):
    """Logits (and loss when `labels` is given) of the torch model, as numpy."""
    ids, lab, msk = torch_inputs(device, input_ids, labels, mask)
    with torch.no_grad():
        logits, second = model(ids, lm_labels=lab, lm_mask=msk, label_smooth=label_smooth)
    if labels is None:
        return to_numpy(logits), [tuple(to_numpy(t) for t in kv) for kv in second]
    return to_numpy(logits), to_numpy(second)


def jittor_forward(model, input_ids, labels=None, mask=None, label_smooth=0.0):
    """Logits (and loss when `labels` is given) of the jittor model, as numpy."""
    from jittor_impl.runtime import jt
    ids, lab, msk = jittor_inputs(input_ids, labels, mask)
    with jt.no_grad():
        logits, second = model(ids, lm_labels=lab, lm_mask=msk, label_smooth=label_smooth)
    if labels is None:
        return to_numpy(logits), [tuple(to_numpy(t) for t in kv) for kv in second]
    return to_numpy(logits), to_numpy(second)


def torch_grads(model, input_ids, labels, mask=None, label_smooth=0.0, device="cpu",
                logits=False):
    """(loss, {name: grad or None}) after one backward pass; None where no grad arrived.
    With `logits`: (loss, grads, logits as numpy)."""
    ids, lab, msk = torch_inputs(device, input_ids, labels, mask)
    model.zero_grad(set_to_none=True)
    out, loss = model(ids, lm_labels=lab, lm_mask=msk, label_smooth=label_smooth)
    loss.backward()
    grads = {n: (None if p.grad is None else to_numpy(p.grad)) for n, p in model.named_parameters()}
    return (float(loss.item()), grads) + ((to_numpy(out),) if logits else ())


def jittor_grads(model, input_ids, labels, mask=None, label_smooth=0.0, names=None,
                 logits=False):
    """(loss, {name: grad}) from `jt.grad(loss, params)` for the trainable parameters, or for
    `names` when given (Jittor returns zeros for a parameter the loss does not reach).
    With `logits`: (loss, grads, logits as numpy)."""
    from jittor_impl.runtime import jt
    ids, lab, msk = jittor_inputs(input_ids, labels, mask)
    out, loss = model(ids, lm_labels=lab, lm_mask=msk, label_smooth=label_smooth)
    params = dict(model.named_parameters())
    if names is None:
        names = [n for n, p in params.items() if p.requires_grad]
    grads = jt.grad(loss, [params[n] for n in names])
    jt.sync_all(True)
    return ((float(loss.item()), {n: to_numpy(g) for n, g in zip(names, grads)})
            + ((to_numpy(out),) if logits else ()))


# ------------------------------------------------------------------------------ comparing
@dataclass
class Comparison:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    device: str
    passed: bool


def differences(a: np.ndarray, b: np.ndarray, atol: float, rtol: float):
    """(max |a-b|, max relative difference over the elements where the relative tolerance
    governs, i.e. rtol * magnitude > atol): shared/runtime/differences.py's measures. Near zero the absolute
    tolerance governs, and a relative difference there would only measure rounding noise."""
    d = difference(a, b, floor=max(atol / rtol if rtol > 0 else atol, np.finfo(np.float64).tiny))
    return d.max_abs, d.max_rel


class ComparisonRecorder:
    """Collects every comparison of a session, for the terminal table and the report files."""

    def __init__(self):
        self.records: list[Comparison] = []

    def add(self, record: Comparison):
        self.records.append(record)

    def groups(self):
        """Records grouped by the part of their name before '/', in first-seen order."""
        out = {}
        for r in self.records:
            out.setdefault(r.name.split("/", 1)[0], []).append(r)
        return out

    def summary_lines(self) -> list[str]:
        """One line per comparison group: count, failures, worst differences, loosest tolerance."""
        header = (f"{'group':<28} {'n':>4} {'fail':>4} {'max_abs':>10} {'max_rel':>10} "
                  f"{'atol':>8} {'rtol':>8}  devices")
        lines = [header, "-" * len(header)]
        for group, records in self.groups().items():
            fails = sum(not r.passed for r in records)
            lines.append(f"{group:<28} {len(records):>4} {fails:>4} "
                         f"{max(r.max_abs for r in records):>10.3g} "
                         f"{max(r.max_rel for r in records):>10.3g} "
                         f"{max(r.atol for r in records):>8.1g} "
                         f"{max(r.rtol for r in records):>8.1g}  "
                         f"{','.join(sorted({r.device for r in records}))}")
        for r in self.records:
            if not r.passed:
                lines.append(f"FAILED {r.name} [{r.device}] max_abs={r.max_abs:.3g} "
                             f"max_rel={r.max_rel:.3g} atol={r.atol:g} rtol={r.rtol:g}")
        return lines

    def to_markdown(self, environment: dict) -> str:
        env = "\n".join(f"- {k}: {v}" for k, v in environment.items())
        rows = [[r.name, "x".join(map(str, r.shape)) or "scalar", f"{r.max_abs:.3g}",
                 f"{r.max_rel:.3g}", f"{r.atol:g}", f"{r.rtol:g}", r.device,
                 "pass" if r.passed else "FAIL"] for r in self.records]
        table = markdown_table(["name", "shape", "max_abs", "max_rel", "atol", "rtol", "device",
                                "result"], rows)
        return ("# Alignment report\n\n## Environment\n\n" + env
                + "\n\n## Summary by group\n\n```\n" + "\n".join(self.summary_lines())
                + "\n```\n\n## Every comparison\n\n" + table + "\n")

    def write(self, folder: str):
        """alignment_report.json and alignment_report.md in `folder`, each written atomically."""
        environment = environment_info()
        write_json(os.path.join(folder, "alignment_report.json"),
                   {"environment": environment,
                    "comparisons": [asdict(r) | {"shape": list(r.shape)} for r in self.records]})
        write_text(os.path.join(folder, "alignment_report.md"), self.to_markdown(environment))


RECORDER = ComparisonRecorder()


def compare(name: str, a, b, atol: float, rtol: float, device: str = "cpu") -> Comparison:
    """Record how far `a` is from the reference `b`, then assert |a-b| <= atol + rtol*|b|
    elementwise (shared.runtime.differences.agree: numpy.allclose's rule; NaN never passes) and equal shapes."""
    a, b = to_numpy(a), to_numpy(b)
    same_shape = a.shape == b.shape
    if same_shape:
        max_abs, max_rel = differences(a, b, atol, rtol)
        passed = agree(a, b, atol=atol, rtol=rtol)
    else:
        max_abs = max_rel = float("inf")
        passed = False
    record = Comparison(name, tuple(int(s) for s in b.shape), max_abs, max_rel, float(atol),
                        float(rtol), device, passed)
    RECORDER.add(record)
    assert same_shape, f"{name}: shapes differ, {a.shape} vs {b.shape}"
    assert passed, (f"{name} [{device}]: max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} "
                    f"exceed atol={atol:g}, rtol={rtol:g}")
    return record


def environment_info() -> dict:
    """Versions and devices the comparisons ran with (shared/runtime/environment.py's probe, plus how
    Jittor's runtime sees CUDA)."""
    info = versions(("numpy", "torch"))
    info.update(platform=platform.platform(), torch_cuda=torch.version.cuda or "none",
                gpu=gpu_name() or "none")
    try:
        from jittor_impl import runtime
        info["jittor"] = runtime.jt.__version__
        info["jittor_cuda"] = f"has_cuda={int(runtime.jt.has_cuda)}; {runtime.cuda_note()}"
    except Exception as exc:  # the report must still be written when jittor is broken
        first_line = (str(exc).strip().splitlines() or [""])[0]
        info["jittor"] = f"unavailable: {type(exc).__name__}: {first_line[:300]}"
    info["devices_compared"] = ",".join(sorted({r.device for r in RECORDER.records})) or "none"
    return info
