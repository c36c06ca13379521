"""Hook-time traces of any PyTorch model or Jittor port: every submodule's input and output, the
gradients of the loss w.r.t. both and w.r.t. every trainable parameter, as an alignment.trace.Trace.

Three things make the records right on models this project did not write:
- **in-place operations**: a forward pre-hook hands each submodule a fresh copy of its floating
  inputs and a forward hook hands its caller a fresh copy of its output, so `ReLU(inplace=True)`
  or `out += identity` change the copies, never a recorded tensor. Values are snapshotted at
  hook time (torch) or held as the node they were (Jittor, whose `+=` rebinds a Var to a new
  node). A torch gradient hook registered before an in-place change receives the gradient of
  the value before it, as wanted.
- **a module's own gradient**: the copy of a module's input has that module as its only
  consumer, so the gradient w.r.t. it is the module's own vector-Jacobian product of the
  gradient w.r.t. its output, not the total gradient of a tensor that a sibling branch (a
  ResNet block's downsample) also reads. Backward blame then lands on the branch that computes
  the difference.
- **aliases**: Jittor's Dropout returns `x.to(x.dtype)`, a new Var on the same node; gradient
  targets are deduplicated by node id (`Var.id`), not Python `id()`, so no target reads zero.

A module called twice is recorded as `name` and `name#2`. The root's output is recorded as
"output" and its inputs as "input.<position or keyword>". A module's hooks of its own are set
aside while tracing and restored after.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .trace import Trace, _first_tensor, _unique

ROOT = "output"


def _is_float(x) -> bool:
    return str(x.dtype).replace("torch.", "") in ("float16", "bfloat16", "float32", "float64")


def _replace_first(value, is_tensor, new):
    """`value` with its first tensor replaced by new(tensor) (a tensor, or in a tuple/list)."""
    if is_tensor(value):
        return new(value)
    if isinstance(value, (tuple, list)):
        items, done = list(value), False
        for i, item in enumerate(items):
            if not done and is_tensor(item):
                items[i], done = new(item), True
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    return value


class _Calls:
    """Names each call of each submodule (`name`, `name#2`, ...) between its pre- and post-hook."""

    def __init__(self):
        self.taken, self.open = set(), {}

    def begin(self, module_key, name):
        call = _unique(name, self.taken)
        self.taken.add(call)
        self.open.setdefault(module_key, []).append(call)
        return call

    def end(self, module_key):
        return self.open[module_key].pop()


class TorchRecorder:
    """Records a torch model (see module doc)."""
    backend = "torch"

    def __init__(self, model, dtype, incoming=None):
        import torch
        self.torch, self.model, self.dtype, self.incoming = torch, model, dtype, incoming
        self.order, self.inputs, self.outputs, self.grads, self.handles = [], {}, {}, {}, []
        self.watched = []  # (kind, name) of every recorded tensor that carries a gradient
        self.calls = _Calls()

    def is_tensor(self, x):
        return isinstance(x, self.torch.Tensor)

    def tensor(self, array):
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            return self.torch.tensor(array, dtype=getattr(self.torch, self.dtype), requires_grad=True)
        return self.torch.as_tensor(array.astype(np.int64) if np.issubdtype(array.dtype, np.integer)
                                    else array)

    def _watch(self, kind, name, x):
        (self.inputs if kind == "in" else self.outputs)[name] = x.detach().clone()
        if x.requires_grad:
            self.watched.append((kind, name))
            x.register_hook(lambda g, _k=(kind, name): self.grads.__setitem__(_k, g.detach().clone()))

    def _copy(self, x):
        return x.clone() if self.is_tensor(x) and _is_float(x) else x

    def attach(self):
        for name, sub in self.model.named_modules():
            if not name:
                continue
            self.handles.append(sub.register_forward_pre_hook(
                lambda mod, args, kw, _n=name: self._pre(mod, _n, args, kw), with_kwargs=True))
            self.handles.append(sub.register_forward_hook(
                lambda mod, args, out: self._post(mod, out)))

    def _pre(self, mod, name, args, kw):
        call = self.calls.begin(id(mod), name)
        args, kw = tuple(self._copy(a) for a in args), {k: self._copy(v) for k, v in kw.items()}
        first = _first_tensor(tuple(args) + tuple(kw.values()), self.is_tensor)
        if first is not None and _is_float(first):
            self._watch("in", call, first)
        return args, kw

    def _post(self, mod, out):
        call = self.calls.end(id(mod))
        first = _first_tensor(out, self.is_tensor)
        if first is None:
            return None
        self.order.append(call)
        if _is_float(first):
            self._watch("out", call, first)
            if self.incoming is not None and call in self.incoming and first.requires_grad:
                given = self.torch.as_tensor(self.incoming[call]).to(first.dtype)
                first.register_hook(lambda g, _given=given: _given.reshape(g.shape))
        else:
            self.outputs[call] = first.detach().clone()
        return _replace_first(out, self.is_tensor, self._copy)

    def detach(self):
        for h in self.handles:
            h.remove()

    def run(self, inputs, loss_fn, backward=True):
        args, kw = inputs
        root_in = {k: self.tensor(v) for k, v in (list(enumerate(args)) + list(kw.items()))}
        for key, x in root_in.items():
            if _is_float(x):
                self._watch("in", f"input.{key}", x)
        out = self.model(*[root_in[i] for i in range(len(args))], **{k: root_in[k] for k in kw})
        first = _first_tensor(out, self.is_tensor)
        self.order.append(ROOT)
        self._watch("out", ROOT, first)
        loss = loss_fn(out)
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        param_grads = {}
        if backward:
            self.model.zero_grad(set_to_none=True)
            loss.backward()
            param_grads = {n: (p.grad if p.grad is not None else self.torch.zeros_like(p))
                           for n, p in params.items()}
        return float(loss.detach().double().reshape(-1)[0]), param_grads

    def numpy(self, x):
        x = x.detach().cpu()
        return (x.double() if x.dtype == self.torch.float64 else x.float()).numpy()

    def grad_of(self, kind, name):
        if (kind, name) in self.grads:
            return self.grads[(kind, name)]
        source = self.inputs if kind == "in" else self.outputs
        return self.torch.zeros_like(source[name])  # on the graph, but the loss does not use it


class JittorRecorder:
    """Records a Jittor model (see module doc)."""
    backend = "jittor"

    def __init__(self, model, dtype, incoming=None, module_map=None):
        from jittor_impl.runtime import jt
        self.jt, self.model, self.dtype, self.incoming = jt, model, dtype, incoming
        self.module_map = module_map or {}
        self.order, self.inputs, self.outputs, self.grads = [], {}, {}, {}
        self.watched, self.saved = [], []
        self.calls = _Calls()

    def is_tensor(self, x):
        return isinstance(x, self.jt.Var)

    def tensor(self, array):
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            return self.jt.array(array.astype(np.float64)).cast(self.dtype)
        return self.jt.array(array.astype(np.int64) if np.issubdtype(array.dtype, np.integer)
                             else array)

    def _watch(self, kind, name, x):
        # an alias: the node as it is now, whatever the module later rebinds `x` to
        (self.inputs if kind == "in" else self.outputs)[name] = x.to(x.dtype)
        if _is_float(x):
            self.watched.append((kind, name))

    def _copy(self, x):
        return x.clone() if self.is_tensor(x) and _is_float(x) else x

    def attach(self):
        for name, sub in self.model.named_modules():
            if not name:
                continue
            name = self.module_map.get(name, name)
            self.saved.append((sub, getattr(sub, "__fhook__", None), getattr(sub, "__fhook2__", None)))
            sub.register_pre_forward_hook(
                lambda mod, args, kw=None, _n=name: self._pre(mod, _n, args, kw or {}))
            sub.register_forward_hook(lambda mod, args, out, kw=None: self._post(mod, out))

    def _pre(self, mod, name, args, kw):
        call = self.calls.begin(id(mod), name)
        args, kw = tuple(self._copy(a) for a in args), {k: self._copy(v) for k, v in kw.items()}
        first = _first_tensor(tuple(args) + tuple(kw.values()), self.is_tensor)
        if first is not None and _is_float(first):
            self._watch("in", call, first)
        return args, kw

    def _post(self, mod, out):
        call = self.calls.end(id(mod))
        first = _first_tensor(out, self.is_tensor)
        if first is None:
            return None
        self.order.append(call)
        self._watch("out", call, first)
        if self.incoming is not None and call in self.incoming and _is_float(first):
            given = self.incoming[call].astype(np.float64)
            return _replace_first(out, self.is_tensor, lambda x: self.jt.grad_hooker(
                (x,), lambda grads, _g=given, _x=x: (self.jt.array(_g).cast(_x.dtype).reshape(_x.shape),))[0])
        return _replace_first(out, self.is_tensor, self._copy)

    def detach(self):
        for sub, post, pre in self.saved:
            sub.remove_forward_hook()
            sub.remove_pre_forward_hook()
            if post is not None:
                sub.register_forward_hook(post)
            if pre is not None:
                sub.register_pre_forward_hook(pre)

    def run(self, inputs, loss_fn, backward=True):
        jt = self.jt
        args, kw = inputs
        root_in = {k: self.tensor(v) for k, v in (list(enumerate(args)) + list(kw.items()))}
        for key, x in root_in.items():
            if _is_float(x):
                self._watch("in", f"input.{key}", x)
        out = self.model(*[root_in[i] for i in range(len(args))], **{k: root_in[k] for k in kw})
        self.order.append(ROOT)
        self._watch("out", ROOT, _first_tensor(out, self.is_tensor))
        loss = loss_fn(out)
        params = {n: p for n, p in self.model.named_parameters() if not p.is_stop_grad()}
        param_grads = {}
        if backward:
            targets = {}  # node id -> Var: one target per node (aliases share one)
            keyed = [(("in", n), self.inputs[n]) for k, n in self.watched if k == "in"]
            keyed += [(("out", n), self.outputs[n]) for k, n in self.watched if k == "out"]
            keyed += [(("param", n), p) for n, p in params.items()]
            for _, var in keyed:
                targets.setdefault(var.id, var)
            grads = dict(zip(targets, jt.grad(loss, list(targets.values()))))
            jt.sync_all(True)
            for key, var in keyed:
                if key[0] == "param":
                    param_grads[key[1]] = grads[var.id]
                else:
                    self.grads[key] = grads[var.id]
        return float(loss.float64().numpy().reshape(-1)[0]), param_grads

    def numpy(self, x):
        return (x if str(x.dtype) == "float64" else x.float32()).numpy()

    def grad_of(self, kind, name):
        return self.grads[(kind, name)]


def record(backend: str, model, inputs, loss_fn: Callable, dtype: str = "float32",
           backward: bool = True, param_map: Callable[[str], str] = None,
           incoming: dict = None, module_map: dict = None) -> Trace:
    """Run `model` once on `inputs` ((positional numpy arrays), {keyword arrays}) and return its
    Trace; `loss_fn(output)` gives the scalar to differentiate; `param_map` renames this
    backend's parameter names to the common ones (torch's).

    `incoming` ({module call: gradient w.r.t. its output}, the float64 reference's): the local
    pass. Each module's backward then starts from the given gradient instead of the one its
    consumers computed, so its input gradient and its parameters' gradients are its own
    vector-Jacobian product on the reference's incoming gradient: no error accumulates from
    the modules after it, and a kink flip stays at the module where it happens. `module_map`
    ({Jittor module name: torch module name}) names a port's modules as torch's."""
    recorder = (TorchRecorder(model, dtype, incoming) if backend == "torch"
                else JittorRecorder(model, dtype, incoming, module_map))
    recorder.attach()
    try:
        loss, param_grads = recorder.run(inputs, loss_fn, backward)
    finally:
        recorder.detach()
    param_map = param_map or (lambda n: n)
    trace = Trace(backend, dtype, order=list(recorder.order), loss=loss)
    trace.inputs = {n: recorder.numpy(x) for n, x in recorder.inputs.items() if _is_float(x)}
    trace.outputs = {n: recorder.numpy(x) for n, x in recorder.outputs.items()}
    if backward:
        for kind, name in recorder.watched:
            target = trace.input_grads if kind == "in" else trace.output_grads
            target[name] = recorder.numpy(recorder.grad_of(kind, name))
        trace.param_grads = {param_map(n): recorder.numpy(g) for n, g in param_grads.items()}
    return trace
