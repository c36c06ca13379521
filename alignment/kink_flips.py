"""Telling a rounding-induced kink flip from a bug.

A piecewise function (the ReLU family, hard activations, max-pooling) has points where its
derivative jumps. When an input lies within rounding of such a point (a ReLU6 input of 7e-6 in
float64 and -2e-6 in fp32), the two computations take different pieces: the forward value
barely moves, but the gradient through that element is g in one and 0 in the other, and every
gradient upstream differs by more than any noise rule allows. That is no port bug; reporting it
as one would fail every model sooner or later.

`flip` recognises it at the module where the backward pass first parts: the module is of a
kinked kind (by the torch original's class name), the gradient it passes back differs from the
float64 reference on few elements (at most FLIP_SHARE of them), and, for element-wise
functions, every such element has its test input and its reference input on different sides of
one of the function's kinks (for pooling, whose kink is a tie between window elements, the
sparsity alone: a flipped maximum moves one gradient between two elements).
"""
from __future__ import annotations

import numpy as np

FLIP_SHARE = 0.01  # at most this share of a tensor's elements may flip

# class name of the torch module -> its kinks, or a function of the module giving them
ELEMENTWISE = {
    "ReLU": lambda m: (0.0,), "LeakyReLU": lambda m: (0.0,), "PReLU": lambda m: (0.0,),
    "ReLU6": lambda m: (0.0, 6.0), "RReLU": lambda m: (0.0,),
    "Hardtanh": lambda m: (float(m.min_val), float(m.max_val)),
    "Hardswish": lambda m: (-3.0, 3.0), "Hardsigmoid": lambda m: (-3.0, 3.0),
    "Hardshrink": lambda m: (-float(m.lambd), float(m.lambd)),
    "Softshrink": lambda m: (-float(m.lambd), float(m.lambd)),
    "Threshold": lambda m: (float(m.threshold),),
}
POOLS = ("MaxPool1d", "MaxPool2d", "MaxPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
         "AdaptiveMaxPool3d")


def kinked(module) -> bool:
    name = type(module).__name__
    return name in ELEMENTWISE or name in POOLS


def sparse_difference(test_grad, ref_grad, base_grad):
    """The mask of the elements where `test_grad` differs from `ref_grad` (more than 10x torch's
    largest own deviation `base_grad - ref_grad`, and above 1e-6 of the gradient's scale), when
    there are some and at most FLIP_SHARE of them; else None."""
    if test_grad is None or ref_grad is None:
        return None
    t, r = np.asarray(test_grad, np.float64), np.asarray(ref_grad, np.float64)
    if t.shape != r.shape or not np.all(np.isfinite(t)) or not r.size:
        return None
    base_dev = float(np.abs(np.asarray(base_grad, np.float64) - r).max()) if base_grad is not None else 0.0
    differs = np.abs(t - r) > max(10 * base_dev, 1e-6 * float(np.abs(r).max()))
    count = int(differs.sum())
    return differs if 0 < count <= FLIP_SHARE * differs.size else None


def flip(module, test_input, ref_input, test_grad, ref_grad, base_grad) -> dict:
    """A description of the flip ({"module_type", "elements", "size"}) when the difference of
    `test_grad` (the gradient w.r.t. the module's input) from `ref_grad` is a kink flip (see
    module doc), else None. `base_grad` (torch fp32's) sets what counts as a differing element
    (`sparse_difference`)."""
    kind = type(module).__name__
    if not kinked(module) or test_input is None or ref_input is None:
        return None
    differs = sparse_difference(test_grad, ref_grad, base_grad)
    if differs is None:
        return None
    count = int(differs.sum())
    t = np.asarray(test_grad)
    if kind in ELEMENTWISE:
        x, x_ref = np.asarray(test_input, np.float64), np.asarray(ref_input, np.float64)
        if x.shape != t.shape:
            return None
        straddles = np.zeros_like(differs)
        for k in ELEMENTWISE[kind](module):
            straddles |= (x - k) * (x_ref - k) <= 0
        if not np.all(straddles[differs]):
            return None
    return {"module_type": kind, "elements": count, "size": int(differs.size)}
