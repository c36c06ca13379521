"""Per-submodule traces of a PyTorch module and its Jittor twin on identical inputs.

`trace_module` runs one backend's module once with forward hooks on every submodule and records,
per submodule (named as in the checkpoints, e.g. `transformer.h.3.mlp`): its first floating
input and its output (the first element when it returns a tuple, as Block and Attention do),
and, after backward, the gradient of the loss w.r.t. both and w.r.t. every trainable parameter.
Methods that are not submodules (the LoRA branch `lora_delta` of `c_attn`) can be tapped by
name, and the root's outputs are named by the caller (`lm_head` logits and `loss` for GPT-2,
whose tied head and loss are functions of the root). Torch gradients come from tensor hooks on
the recorded tensors, Jittor's from one `jt.grad(loss, [recorded tensors and parameters])`.

Input and output are both recorded so that alignment.compare can localize: the module whose
input agrees and whose output does not is where the twins part, not merely the first of its
children that runs after the damage (attention's softmax sits between c_attn and c_proj).

`trace_pair` is generic over twin modules: a `call(module, **tensors)` that runs either, a
`loss_fn(output)`, and a parameter-name map (identity for this project). The order of the
recorded modules is the order in which their forward passes finished, so nested modules come
before their parents and reversing it gives the order in which backward reaches them.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

FLOAT_DTYPES = ("float32", "float64", "bfloat16")


@dataclass
class Trace:
    """What one backend computed: arrays keyed by module name (parameters by parameter name).
    `order` lists the modules in the order their forward passes finished."""
    backend: str
    dtype: str
    precision: str = "fp32"  # "bf16" when run under the backend's bf16 autocast
    order: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    output_grads: dict = field(default_factory=dict)
    input_grads: dict = field(default_factory=dict)
    param_grads: dict = field(default_factory=dict)
    loss: Optional[float] = None


def _first_tensor(value, is_tensor):
    """The tensor itself, or the first tensor of a tuple/list output (Block returns (x, present))."""
    if is_tensor(value):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if is_tensor(item):
                return item
    return None


def _unique(name, taken):
    """`name`, or `name#2`, `name#3`... when a module runs more than once in one forward."""
    if name not in taken:
        return name
    n = 2
    while f"{name}#{n}" in taken:
        n += 1
    return f"{name}#{n}"


@contextlib.contextmanager
def _method_taps(module, methods, record):
    """Wrap `method` of every submodule that has it so each call records (name.method, result).
    Restores exactly what was there (an instance attribute planted by a test survives)."""
    wrapped = []
    for name, sub in module.named_modules():
        for method in methods:
            original = getattr(sub, method, None)
            if original is None or not callable(original):
                continue
            had_own = method in sub.__dict__
            saved = sub.__dict__.get(method)

            def tap(*args, _original=original, _name=f"{name}.{method}" if name else method, **kw):
                out = _original(*args, **kw)
                record(_name, args, out)
                return out
            setattr(sub, method, tap)
            wrapped.append((sub, method, had_own, saved))
    try:
        yield
    finally:
        for sub, method, had_own, saved in wrapped:
            if had_own:
                setattr(sub, method, saved)
            else:
                delattr(sub, method)


class _Recorder:
    """Collects (input, output) tensors per module name, in completion order."""

    def __init__(self, is_tensor):
        self.is_tensor = is_tensor
        self.order, self.outputs, self.inputs = [], {}, {}

    def __call__(self, name, args, output):
        out = _first_tensor(output, self.is_tensor)
        if out is None:
            return
        name = _unique(name, self.outputs)
        self.order.append(name)
        self.outputs[name] = out
        inp = _first_tensor(tuple(args), self.is_tensor)
        if inp is not None and _is_float(inp):
            self.inputs[name] = inp


def _is_float(x):
    return str(x.dtype).replace("torch.", "") in FLOAT_DTYPES


# ----------------------------------------------------------------------------- backends
class TorchSide:
    name = "torch"

    def __init__(self, device="cpu"):
        import torch
        self.torch, self.device = torch, device

    def is_tensor(self, x):
        return isinstance(x, self.torch.Tensor)

    def tensor(self, array, dtype):
        t = self.torch
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.integer):
            return t.as_tensor(array.astype(np.int64), device=self.device)
        return t.as_tensor(array, device=self.device).to(getattr(t, dtype))

    def numpy(self, x):
        x = x.detach().cpu()
        return (x.double() if x.dtype == self.torch.float64 else x.float()).numpy()

    def hook(self, module, record):
        handles = []
        for name, sub in module.named_modules():
            if name:
                handles.append(sub.register_forward_hook(
                    lambda mod, args, out, _n=name: record(_n, args, out)))
        return handles

    def unhook(self, handles):
        for h in handles:
            h.remove()

    def parameters(self, module):
        return {n: p for n, p in module.named_parameters() if p.requires_grad}

    def backward(self, module, loss, tensors: dict, params: dict):
        """Gradients of `loss` w.r.t. each tensor of `tensors` (key -> tensor) and each parameter."""
        grads = {}
        for key, x in tensors.items():
            if x.requires_grad:
                x.register_hook(lambda g, _k=key: grads.__setitem__(_k, g))
        module.zero_grad(set_to_none=True)
        loss.backward()
        param_grads = {n: p.grad for n, p in params.items() if p.grad is not None}
        return grads, param_grads


class JittorSide:
    name = "jittor"

    def __init__(self, device="cpu"):
        from jittor_impl.runtime import jt
        self.jt = jt

    def is_tensor(self, x):
        return isinstance(x, self.jt.Var)

    def tensor(self, array, dtype):
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.integer):
            return self.jt.array(array.astype(np.int64))
        return self.jt.array(array.astype(np.float64)).cast(dtype)

    def numpy(self, x):
        return (x if str(x.dtype) == "float64" else x.float32()).numpy()

    def hook(self, module, record):
        subs = [(n, s) for n, s in module.named_modules() if n]
        for name, sub in subs:
            sub.register_forward_hook(lambda mod, args, out, *kw, _n=name: record(_n, args, out))
        return [s for _, s in subs]

    def unhook(self, handles):
        for sub in handles:
            sub.remove_forward_hook()

    def parameters(self, module):
        return {n: p for n, p in module.named_parameters() if not p.is_stop_grad()}

    def backward(self, module, loss, tensors: dict, params: dict):
        # One target per graph node: a parent that returns its child's output holds the same
        # Var, Jittor's Dropout returns an alias (a new Var on its input's node), and jt.grad
        # gives a repeated node a zero gradient. Var.id names the node, Python's id() the Var.
        unique = {}
        for x in list(tensors.values()) + list(params.values()):
            unique.setdefault(x.id, x)
        grads = dict(zip(unique, self.jt.grad(loss, list(unique.values()))))
        self.jt.sync_all(True)
        return ({k: grads[x.id] for k, x in tensors.items()},
                {n: grads[p.id] for n, p in params.items()})


def side(backend: str, device: str = "cpu"):
    return {"torch": TorchSide, "jittor": JittorSide}[backend](device)


# ---------------------------------------------------------------------------------- trace
def trace_module(backend: str, module, inputs: dict, call: Callable, loss_fn: Callable = None,
                 root_outputs: Sequence[str] = ("output",), methods: Sequence[str] = (),
                 dtype: str = "float32", backward: bool = True, device: str = "cpu",
                 param_map: Callable[[str], str] = None, context=None) -> Trace:
    """Run `call(module, **tensors)` once on `backend` and record everything (see module doc).

    `inputs`: numpy arrays (integers become int64, floats `dtype`). `root_outputs` names the
    root's outputs in order (a tensor or the leading tensors of a tuple). `loss_fn(output)`
    gives the scalar to differentiate (default: the last root output). `param_map` renames
    this backend's parameters to the common names. `context()`: a context manager entered
    around the run (autocast, a float64 patch). The module's train/eval mode is left as is."""
    s = side(backend, device)
    recorder = _Recorder(s.is_tensor)
    handles = s.hook(module, recorder)
    param_map = param_map or (lambda n: n)
    trace = Trace(backend, dtype)
    try:
        with (context() if context else contextlib.nullcontext()), \
                _method_taps(module, methods, recorder):
            tensors = {k: s.tensor(v, dtype) for k, v in inputs.items()}
            output = call(module, **tensors)
            roots = [output] if s.is_tensor(output) else list(output)
            for name, value in zip(root_outputs, roots):
                if s.is_tensor(value):
                    recorder.order.append(name)
                    recorder.outputs[name] = value
            loss = loss_fn(output) if loss_fn else recorder.outputs[root_outputs[-1]]
            trace.loss = float(s.numpy(loss).reshape(-1)[0])
            if backward:
                targets = {("out", n): x for n, x in recorder.outputs.items() if _is_float(x)}
                targets.update({("in", n): x for n, x in recorder.inputs.items()})
                grads, pgrads = s.backward(module, loss, targets, s.parameters(module))
                for (kind, n), g in grads.items():
                    (trace.output_grads if kind == "out" else trace.input_grads)[n] = s.numpy(g)
                trace.param_grads = {param_map(n): s.numpy(g) for n, g in pgrads.items()}
    finally:
        s.unhook(handles)
    trace.order = list(recorder.order)
    trace.outputs = {n: s.numpy(x) for n, x in recorder.outputs.items()}
    trace.inputs = {n: s.numpy(x) for n, x in recorder.inputs.items()}
    return trace


def trace_pair(torch_module, jittor_module, inputs: dict, call: Callable, **kw):
    """(torch trace, jittor trace) of twin modules on the same numpy inputs; `kw` as
    `trace_module` (a `context` may be a dict {backend: context factory})."""
    context = kw.pop("context", None) or {}
    return (trace_module("torch", torch_module, inputs, call, context=context.get("torch"), **kw),
            trace_module("jittor", jittor_module, inputs, call, context=context.get("jittor"), **kw))
