"""Compare two traces (alignment.model_trace) tensor by tensor and say where the twins part.

Per tensor (`check_tensor`): max abs and max rel difference, relative L2 ||a-b||/||b|| (all three
through shared.runtime.differences.difference, the project's one definition) and cosine of the test backend
(Jittor) against the base (torch), and pass/fail by one of two rules:

- noise floor (when a float64 reference trace exists): with e(x) = ||x - x64|| / ||x64||, the
  test passes when e(test) <= K * e(base) + FLOOR. The base's own rounding error against
  float64 is the yardstick, so the rule scales itself per tensor, per layer and per precision
  instead of one fixed 1e-5 for everything.
- fixed (no reference): relative L2 against the base <= `rel_tol`.

K = 8 for fp32, from measurement: over 4 seeds x every recorded tensor of a tiny GPT-2
(outputs, inputs, output/input gradients, parameter gradients; 492 tensors with a non-zero
torch error), Jittor's error against float64 was at most 3.4x torch's (median 1.23x, 99th
percentile 1.87x), apart from one scalar covered by the floor (below). Among the tensors whose
torch error is above the floor, alignment/test_noise_floor.py re-measures 323 over 3 seeds as
diff_layers records them through alignment.auto_diff (every output tensor, and the gradient
w.r.t. the loss mask, a recorded float input): max 3.29x (that mask gradient; 2.30x without it),
median 1.25x, p99 2.18x (294 before, with the first output only: max 2.19x), and asserts
max <= K/2. Jittor sums in other orders, not less accurately.
K = 8 leaves a margin over the worst seen, while the subtlest planted bug (GELU exact vs tanh,
~1e-4 relative) sits far above torch's ~1e-7.
FLOOR is 4 unit roundoffs of the precision (2^-22 for fp32): a tensor both compute exactly
(an embedding lookup, e = 0) has nothing to scale by, and a scalar (the loss) has a single
rounding draw: torch's loss once came out 1.4e-8 from float64 by luck, Jittor's 1.6e-7 (11x,
1.3 ulp). bf16 on the CPU cannot be judged by this rule: Jittor's CPU products in bf16
were ~95x less accurate than torch's CPU autocast (median ratio over 126 tensors; relative
error 0.11 vs 0.0038 at the first LoRA product, measured), so the bf16 comparison runs on CUDA
only (marked gpu), with K_BF16.

Localization (`first_divergence`): forward, the first module in forward order whose output
(every tensor of it) fails while its input passes, preferring the deepest such module (the parent of a failing
child fails too); backward, in backward order, the deepest module whose gradient w.r.t. its
output passes while the gradient its backward produces (w.r.t. its input) fails, and when no
module qualifies (a bug in an operation that belongs to no submodule, such as the tied head),
the consumer whose backward produced the first failing gradient.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from shared.runtime.differences import agree, difference

from .model_trace import module_of

K_FP32 = 8.0
K_BF16 = 8.0  # the fp32 value until measured on CUDA (alignment/test_noise_floor.py, gpu)
FLOORS = {"float32": 2.0 ** -22, "bfloat16": 2.0 ** -7, "float64": 2.0 ** -51}  # 4 unit roundoffs
REL_TOL = 1e-5  # the fixed rule, without a reference
KINDS = ("outputs", "inputs", "output_grads", "input_grads", "param_grads")


def _rel_l2(x, ref):
    return difference(x, ref).rel_l2


def cosine(a, b) -> float:
    """cos(a, b) of the flattened tensors; 1.0 for two zero tensors, 0.0 for one."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else float(na == nb)


def check_tensor(name, test, base, ref=None, k: float = K_FP32, floor: float = FLOORS["float32"],
                 rel_tol: float = REL_TOL, kind: str = "") -> dict:
    """One record comparing `test` (Jittor) with `base` (torch), and with the float64 `ref` when
    given (the noise-floor rule; otherwise relative L2 <= rel_tol). Missing tensors, shape
    mismatches and NaN fail."""
    record = {"name": name, "kind": kind, "shape": None, "max_abs": None, "max_rel": None,
              "rel_l2": None, "cosine": None, "err_test": None, "err_base": None, "bound": None,
              "rule": "noise_floor" if ref is not None else "fixed", "passed": False, "why": ""}
    if test is None or base is None:
        record["why"] = "missing in " + ("test" if test is None else "base")
        return record
    a, b = np.asarray(test, np.float64), np.asarray(base, np.float64)
    if a.size == b.size == 1:  # a scalar: Jittor's reductions give shape [1], torch's ()
        a = a.reshape(b.shape)
    record["shape"] = list(b.shape)
    if a.shape != b.shape:
        record["why"] = f"shape {list(a.shape)} vs {list(b.shape)}"
        return record
    # max_rel only over entries above 1e-3 of the tensor's largest magnitude: near zero an
    # absolute difference governs, and a ratio would only measure rounding
    rel_floor = 1e-3 * float(np.abs(b).max()) if b.size else 0.0
    d = difference(a, b, floor=rel_floor if rel_floor > 0 else np.finfo(np.float64).tiny)
    record["max_abs"], record["max_rel"], record["rel_l2"] = d.max_abs, d.max_rel, d.rel_l2
    record["cosine"] = cosine(a, b)
    if ref is not None:
        r = np.asarray(ref, np.float64).reshape(b.shape)
        record["err_base"] = _rel_l2(b, r)
    if not np.all(np.isfinite(a)):
        record["why"] = "non-finite values"
        return record
    if ref is not None:  # Jittor against float64, within K x torch's own error + FLOOR
        record["err_test"] = _rel_l2(a, r)
        record["bound"] = k * record["err_base"] + floor
        record["passed"] = agree(a, r, rel_l2=record["bound"])
    else:
        record["bound"] = rel_tol
        record["passed"] = agree(a, b, rel_l2=rel_tol)
    if not record["passed"]:
        record["why"] = "exceeds bound"
    return record


@dataclass
class TraceComparison:
    records: list = field(default_factory=list)
    forward_order: list = field(default_factory=list)
    first_divergence: dict = field(default_factory=dict)
    rule: dict = field(default_factory=dict)

    def failing(self, kind=None):
        return [r for r in self.records if not r["passed"] and (kind is None or r["kind"] == kind)]

    def passed(self) -> bool:
        return not self.failing()

    def to_json(self) -> dict:
        return asdict(self)


def _status(records, kind):
    """{call: whether all its tensors of `kind` pass} (a call's output tensors are judged together)."""
    status = {}
    for r in records:
        if r["kind"] == kind:
            call = module_of(r["name"])
            status[call] = status.get(call, True) and r["passed"]
    return status


def _deepest_first(candidates, order):
    """The first candidate in `order` that has no other candidate nested inside it."""
    for name in order:
        if name in candidates and not any(c != name and c.startswith(name.split("#")[0] + ".")
                                          for c in candidates):
            return name
    return None


def localize(order, produced_ok: dict, incoming_ok: dict, forward: bool = True) -> Optional[str]:
    """The module where values first part (see module doc), `order` in the direction of the pass.

    Forward: produced = each module's output, incoming = its input. Backward: produced = the
    gradient w.r.t. its input (what its backward makes), incoming = the gradient w.r.t. its
    output. A candidate produces a failing value from a passing one; a module without a recorded
    input is a candidate forward when nothing before it failed (the root's outputs). When no
    module qualifies, the first failing value in `order` is blamed: forward on its own module,
    backward on the consumer just before it, whose backward made it (e.g. the tied head)."""
    values = produced_ok if forward else incoming_ok
    failed_before, candidates = False, set()
    for name in order:
        if name in produced_ok and not produced_ok[name] and \
                incoming_ok.get(name, forward and not failed_before):
            candidates.add(name)
        failed_before = failed_before or not values.get(name, True)
    found = _deepest_first(candidates, order)
    if found is not None or not failed_before:
        return found
    last_ok = None
    for name in order:
        if name not in values:
            continue
        if not values[name]:
            return name if forward else (last_ok or name)
        last_ok = name
    return None


def compare_traces(test, base, ref=None, k: float = None, floor: float = None,
                   rel_tol: float = REL_TOL) -> TraceComparison:
    """Every tensor of `base` checked against `test` (and `ref`), and the first divergence
    forward and backward. k/floor default to the precision's (K_FP32/K_BF16, FLOORS)."""
    bf16 = "bf16" in (test.precision, base.precision)
    k = k if k is not None else (K_BF16 if bf16 else K_FP32)
    floor = floor if floor is not None else FLOORS["bfloat16" if bf16 else "float32"]
    out = TraceComparison(forward_order=list(base.order),
                          rule={"k": k, "floor": floor, "reference": ref is not None,
                                "rel_tol": rel_tol})
    for kind in KINDS:
        base_arrays, test_arrays = getattr(base, kind), getattr(test, kind)
        ref_arrays = getattr(ref, kind) if ref is not None else {}
        names = list(base_arrays)
        if kind != "input_grads":  # torch has none for an input that needs no gradient
            names += [n for n in test_arrays if n not in base_arrays]
        for name in names:
            out.records.append(check_tensor(name, test_arrays.get(name), base_arrays.get(name),
                                            ref_arrays.get(name) if ref is not None else None,
                                            k=k, floor=floor, rel_tol=rel_tol, kind=kind))
    order = list(base.order)
    forward = localize(order, _status(out.records, "outputs"), _status(out.records, "inputs"))
    backward = localize(order[::-1], _status(out.records, "input_grads"),
                        _status(out.records, "output_grads"), forward=False)
    if backward is None:  # every module gradient agrees: a parameter gradient may still differ
        bad = [r["name"] for r in out.failing("param_grads")]
        backward = bad[0].rsplit(".", 1)[0] if bad else None
    out.first_divergence = {"forward": forward, "backward": backward}
    return out


def summary_lines(comparison: TraceComparison, kinds=("outputs", "output_grads", "param_grads"),
                  only_failing: bool = False) -> list:
    """A fixed-width table of the records of `kinds`."""
    head = (f"{'kind':<12} {'tensor':<44} {'max_abs':>9} {'rel_l2':>9} {'cosine':>10} "
            f"{'err_jt':>9} {'err_pt':>9} {'ok':>4}")
    lines = [head]
    for r in comparison.records:
        if r["kind"] not in kinds or (only_failing and r["passed"]):
            continue
        f = lambda v, w=9, p=2: f"{v:>{w}.{p}e}" if isinstance(v, float) else f"{'-':>{w}}"
        lines.append(f"{r['kind']:<12} {r['name']:<44} {f(r['max_abs'])} {f(r['rel_l2'])} "
                     f"{f(r['cosine'], 10, 7) if r['cosine'] is None else format(r['cosine'], '>10.7f')} "
                     f"{f(r['err_test'])} {f(r['err_base'])} {'yes' if r['passed'] else 'NO':>4}")
    fd = comparison.first_divergence
    lines.append(f"first divergence: forward={fd.get('forward')} backward={fd.get('backward')}")
    return lines
