"""Hook-time traces of any PyTorch model or Jittor port: every submodule's input and every tensor
of its output, the gradients of the loss w.r.t. them and w.r.t. every trainable parameter.

Three things make the records right on models this project did not write:
- **in-place operations**: a forward pre-hook hands each submodule a fresh copy of every
  floating tensor among its inputs (positional and keyword, inside tuples, lists and dicts too)
  and a forward hook hands its caller a fresh copy of each output tensor (the copy is
  what is recorded: its gradient is the consumers', not that of uses inside the module, such as
  attention's key returned as the cache), so `ReLU(inplace=True)` or `out += identity` change
  the copies, never a recorded tensor. Values
  are snapshotted at hook time (torch) or held as the node they were (Jittor, whose `+=` rebinds
  a Var to a new node). A torch gradient hook registered before an in-place change receives the
  gradient of the value before it, as wanted.
- **a module's own gradient**: the copy of each of a module's inputs has that module as its only
  consumer, so the gradient w.r.t. it is the module's own vector-Jacobian product of the
  gradient w.r.t. its output, not the total gradient of a tensor that a sibling branch (a
  ResNet block's downsample) also reads. Backward blame then lands on the branch that computes
  the difference.
- **aliases**: Jittor's Dropout returns `x.to(x.dtype)`, a new Var on the same node; gradient
  targets are deduplicated by node id (`Var.id`), not Python `id()`, so no target reads zero.

Names. A module call is named as the module (`name#2`, `name#3`... when it runs again in one
forward); a method tapped by `methods` (a computation that is no submodule, such as LoRA's
branch) as `module.method`. A call that returns one tensor records it under the call's name;
one that returns tuples, lists or dicts records each tensor as `call.out[0]`, `call.out[1][0]`,
`call.out["key"]` (`module_of` gives the call back). Its inputs likewise: the one floating
tensor of a call that takes one is recorded under the call's name; a call that takes several
records each by its place among the arguments, `call.in[0]`, `call.in[1][0]` (positional),
`call.in["mask"]` (keyword). The root's output is "output" (or the
caller's `output_names`, one per output tensor in order) and its inputs "input.<position or
keyword>". A module's hooks of its own are set aside while tracing and restored after.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

ROOT = "output"
OUT = ".out["  # what separates a call's name from the path of one of its output tensors
IN = ".in["  # ... and from the path of one of its input tensors, when it takes several


@dataclass
class Trace:
    """What one backend computed: arrays keyed by tensor name (parameters by parameter name).
    `order` lists the calls in the order their forward passes finished, the root's outputs
    last (`roots`); `parents` names each call's enclosing call (the root: `roots[0]`)."""
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
    roots: list = field(default_factory=list)
    parents: dict = field(default_factory=dict)


def module_of(tensor_name: str) -> str:
    """The call an output or input tensor belongs to: `transformer.h.0.out[1][0]` and
    `attn.in["mask"]` -> `transformer.h.0` and `attn` (module names hold no "[", so the first
    OUT or IN is the separator)."""
    cuts = [c for c in (tensor_name.find(OUT), tensor_name.find(IN)) if c >= 0]
    return tensor_name[:min(cuts)] if cuts else tensor_name


def unique_name(name, taken):
    """`name`, or `name#2`, `name#3`... when a module runs more than once in one forward."""
    if name not in taken:
        return name
    n = 2
    while f"{name}#{n}" in taken:
        n += 1
    return f"{name}#{n}"


def tensor_items(value, is_tensor, path: str = "") -> list:
    """[(path, tensor)] of every tensor in `value`: ("", value) for a tensor; "[0]", "[1][0]",
    '["key"]' paths inside tuples, lists and dicts (nested), in order."""
    if is_tensor(value):
        return [(path, value)]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in tensor_items(v, is_tensor, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items()
                for item in tensor_items(v, is_tensor, f'{path}["{k}"]')]
    return []


def map_tensors(value, is_tensor, new, path: str = ""):
    """`value` rebuilt with every tensor x replaced by new(path, x) (tuples, namedtuples, lists
    and dicts keep their types)."""
    if is_tensor(value):
        return new(path, value)
    if isinstance(value, (tuple, list)):
        items = [map_tensors(v, is_tensor, new, f"{path}[{i}]") for i, v in enumerate(value)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return type(value)((k, map_tensors(v, is_tensor, new, f'{path}["{k}"]'))
                           for k, v in value.items())
    return value


def argument_items(args, kw, is_tensor) -> list:
    """[(path, tensor)] of every tensor among a call's arguments: "[0]", "[1][0]" for positional
    ones, '["mask"]' for keyword ones (nested as tensor_items)."""
    return tensor_items(list(args), is_tensor) + [
        item for k, v in kw.items() for item in tensor_items(v, is_tensor, f'["{k}"]')]


def input_names(call: str, paths) -> list:
    """The record names of a call's floating inputs at `paths`: the call's own name for one,
    `call.in<path>` for each of several (see module doc)."""
    paths = list(paths)
    return [call] if len(paths) == 1 else [f"{call}.in{p}" for p in paths]


def first_tensor(value, is_tensor):
    items = tensor_items(value, is_tensor)
    return items[0][1] if items else None


def tensor_name(call: str, path: str) -> str:
    return f"{call}.out{path}" if path else call


def _is_float(x) -> bool:
    return str(x.dtype).replace("torch.", "") in ("float16", "bfloat16", "float32", "float64")


class _Calls:
    """Names each call of each submodule (`name`, `name#2`, ...) between its pre- and post-hook,
    and the enclosing call of each (the call open when it began)."""

    def __init__(self, root):
        self.taken, self.open, self.stack, self.parents = set(), {}, [], {}
        self.root = root

    def begin(self, key, name):
        call = unique_name(name, self.taken)
        self.taken.add(call)
        self.parents[call] = self.stack[-1] if self.stack else self.root
        self.stack.append(call)
        self.open.setdefault(key, []).append(call)
        return call

    def end(self, key):
        call = self.open[key].pop()
        self.stack.remove(call)
        return call


class _Recorder:
    """What both frameworks' recorders share: the copies and records around every call, the
    method taps, the root's inputs and outputs. Subclasses give the framework's tensors, hooks,
    gradient bookkeeping and backward pass (see module doc)."""
    backend = ""

    def __init__(self, model, dtype, incoming=None, module_map=None, methods=(), output_names=()):
        self.model, self.dtype, self.incoming = model, dtype, incoming
        self.module_map, self.methods, self.output_names = module_map or {}, methods, tuple(output_names)
        self.order, self.inputs, self.outputs, self.grads = [], {}, {}, {}
        self.arriving = {}  # local pass: output tensor -> the gradient its consumers computed
        self.watched = []  # (kind, name) of every recorded tensor that carries a gradient
        self.roots = []
        self.calls = _Calls(self.output_names[0] if self.output_names else ROOT)
        self.taps = []

    # the framework's part
    def is_tensor(self, x):
        raise NotImplementedError

    def tensor(self, array):
        """A root input in this framework (floats in self.dtype, integers int64)."""
        raise NotImplementedError

    def _watch(self, kind, name, x):
        raise NotImplementedError

    def _copy(self, x):
        return x.clone() if self.is_tensor(x) and _is_float(x) else x

    def _given(self, name, x):
        """`x` passed on so that its backward starts from self.incoming[name] (the arriving
        gradient kept in self.arriving)."""
        raise NotImplementedError

    # shared
    def _pre(self, key, name, args, kw):
        call = self.calls.begin(key, name)
        fresh = lambda path, x: self._copy(x)  # noqa: E731
        args = map_tensors(tuple(args), self.is_tensor, fresh)
        kw = map_tensors(dict(kw), self.is_tensor, fresh)
        floats = [(p, x) for p, x in argument_items(args, kw, self.is_tensor) if _is_float(x)]
        for input_name, (_, x) in zip(input_names(call, [p for p, _ in floats]), floats):
            self._watch("in", input_name, x)
        return args, kw

    def _post(self, key, out):
        call = self.calls.end(key)
        if not tensor_items(out, self.is_tensor):
            return out
        self.order.append(call)

        def each(path, x):  # what the caller gets is watched: its gradient is the consumers'
            name = tensor_name(call, path)  # only, not that of uses inside the module
            if self.incoming is not None and name in self.incoming and _is_float(x):
                handed = self._given(name, x)
            else:
                handed = self._copy(x)
            self._watch("out", name, handed)
            return handed
        return map_tensors(out, self.is_tensor, each)

    def _tap_methods(self):
        """Wrap each method named in self.methods of every submodule that has one, so that its
        calls are recorded like a submodule's (as `module.method`)."""
        for name, sub in self.model.named_modules():
            for method in self.methods:
                original = getattr(sub, method, None)
                if original is None or not callable(original) or hasattr(original, "named_modules"):
                    continue
                module = self.module_map.get(name, name)
                tap_name = f"{module}.{method}" if module else method

                def tap(*args, _original=original, _name=tap_name, _key=(id(sub), method), **kw):
                    args, kw = self._pre(_key, _name, args, kw)
                    return self._post(_key, _original(*args, **kw))
                self.taps.append((sub, method, method in sub.__dict__, sub.__dict__.get(method)))
                setattr(sub, method, tap)

    def _untap_methods(self):
        for sub, method, had_own, saved in reversed(self.taps):
            if had_own:
                setattr(sub, method, saved)
            else:
                delattr(sub, method)
        self.taps = []

    def _root_names(self, out):
        """[(tensor name, order entry, tensor)] of the root's output (see module doc)."""
        named = []
        for i, (path, x) in enumerate(tensor_items(out, self.is_tensor)):
            name = self.output_names[i] if i < len(self.output_names) else tensor_name(ROOT, path)
            named.append((name, module_of(name), x))
        return named

    def forward(self, inputs, loss_fn):
        """The root's run: its inputs converted and recorded, its output tensors recorded (as
        the last entries of the order) and the loss."""
        args, kw = inputs
        root_in = {k: self.tensor(v) for k, v in (list(enumerate(args)) + list(kw.items()))}
        for key, x in root_in.items():
            if self.is_tensor(x) and _is_float(x):
                self._watch("in", f"input.{key}", x)
        out = self.model(*[root_in[i] for i in range(len(args))], **{k: root_in[k] for k in kw})
        for name, entry, x in self._root_names(out):
            if entry not in self.roots:
                self.roots.append(entry)
                self.order.append(entry)
            self._watch("out", name, x)
        return loss_fn(out)


class TorchRecorder(_Recorder):
    """Records a torch model (see module doc)."""
    backend = "torch"

    def __init__(self, model, dtype, incoming=None, module_map=None, methods=(), output_names=()):
        import torch
        super().__init__(model, dtype, incoming, module_map, methods, output_names)
        self.torch, self.handles = torch, []
        self.device = next((p.device for p in model.parameters()), None)

    def is_tensor(self, x):
        return isinstance(x, self.torch.Tensor)

    def tensor(self, array):
        if not isinstance(array, np.ndarray):
            return array  # a Python value (a flag, a number) passed as it is
        if np.issubdtype(array.dtype, np.floating):
            return self.torch.tensor(array, dtype=getattr(self.torch, self.dtype),
                                     device=self.device, requires_grad=True)
        return self.torch.as_tensor(array.astype(np.int64) if np.issubdtype(array.dtype, np.integer)
                                    else array, device=self.device)

    def _watch(self, kind, name, x):
        (self.inputs if kind == "in" else self.outputs)[name] = x.detach().clone()
        if x.requires_grad:
            self.watched.append((kind, name))
            x.register_hook(lambda g, _k=(kind, name): self.grads.__setitem__(_k, g.detach().clone()))

    def _given(self, name, x):
        if x.requires_grad:
            given = self.torch.as_tensor(self.incoming[name]).to(device=x.device, dtype=x.dtype)

            def hook(g, _name=name, _given=given):
                self.arriving[_name] = g.detach().clone()
                return _given.reshape(g.shape)
            x.register_hook(hook)
        return self._copy(x)

    def attach(self):
        for name, sub in self.model.named_modules():
            if not name:
                continue
            self.handles.append(sub.register_forward_pre_hook(
                lambda mod, args, kw, _n=name: self._pre(id(mod), _n, args, kw), with_kwargs=True))
            self.handles.append(sub.register_forward_hook(
                lambda mod, args, out: self._post(id(mod), out)))
        self._tap_methods()

    def detach(self):
        for h in self.handles:
            h.remove()
        self._untap_methods()

    def run(self, inputs, loss_fn, backward=True):
        loss = self.forward(inputs, loss_fn)
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


class JittorRecorder(_Recorder):
    """Records a Jittor model (see module doc)."""
    backend = "jittor"

    def __init__(self, model, dtype, incoming=None, module_map=None, methods=(), output_names=()):
        from jittor_impl.runtime import jt
        super().__init__(model, dtype, incoming, module_map, methods, output_names)
        self.jt, self.saved = jt, []

    def is_tensor(self, x):
        return isinstance(x, self.jt.Var)

    def tensor(self, array):
        if not isinstance(array, np.ndarray):
            return array  # a Python value (a flag, a number) passed as it is
        if np.issubdtype(array.dtype, np.floating):
            return self.jt.array(array.astype(np.float64)).cast(self.dtype)
        return self.jt.array(array.astype(np.int64) if np.issubdtype(array.dtype, np.integer)
                             else array)

    def _watch(self, kind, name, x):
        # an alias: the node as it is now, whatever the module later rebinds `x` to
        (self.inputs if kind == "in" else self.outputs)[name] = x.to(x.dtype)
        if _is_float(x):
            self.watched.append((kind, name))

    def _given(self, name, x):
        given = self.incoming[name].astype(np.float64)

        def hook(grads, _name=name, _given=given, _x=x):
            self.arriving[_name] = grads[0]
            return (self.jt.array(_given).cast(_x.dtype).reshape(_x.shape),)
        return self.jt.grad_hooker((x,), hook)[0]

    def attach(self):
        for name, sub in self.model.named_modules():
            if not name:
                continue
            name = self.module_map.get(name, name)
            self.saved.append((sub, getattr(sub, "__fhook__", None), getattr(sub, "__fhook2__", None)))
            sub.register_pre_forward_hook(
                lambda mod, args, kw=None, _n=name: self._pre(id(mod), _n, args, kw or {}))
            sub.register_forward_hook(lambda mod, args, out, kw=None: self._post(id(mod), out))
        self._tap_methods()

    def detach(self):
        for sub, post, pre in self.saved:
            sub.remove_forward_hook()
            sub.remove_pre_forward_hook()
            if post is not None:
                sub.register_forward_hook(post)
            if pre is not None:
                sub.register_pre_forward_hook(pre)
        self._untap_methods()

    def run(self, inputs, loss_fn, backward=True):
        jt = self.jt
        loss = self.forward(inputs, loss_fn)
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
           incoming: dict = None, module_map: dict = None, methods=(), output_names=(),
           context: Callable = None) -> Trace:
    """Run `model` once on `inputs` ((positional numpy arrays), {keyword arrays}; values that are
    no arrays, such as flags, are passed as they are) and return its Trace; `loss_fn(output)`
    gives the scalar to differentiate; `param_map` renames this backend's parameter names to the
    common ones (torch's); `methods`: method names recorded like submodules; `output_names`:
    names of the root's output tensors; `context()`: a context manager entered around the run
    (an autocast).

    `incoming` ({output tensor: gradient w.r.t. it}, the float64 reference's): the local pass.
    Each module's backward then starts from the given gradient instead of the one its
    consumers computed, so its input gradient and its parameters' gradients are its own
    vector-Jacobian product on the reference's incoming gradient: no error accumulates from
    the modules after it, and a kink flip stays at the module where it happens. The gradient
    its consumers computed (from the given gradients at their own outputs) is what the trace's
    `output_grads` then holds, so a wrong backward in code that is no submodule (a tied head
    in the root's forward) shows at the outputs it reads. `module_map` ({Jittor module name:
    torch module name}) names a port's modules as torch's."""
    kw = dict(incoming=incoming, module_map=module_map, methods=methods, output_names=output_names)
    recorder = (TorchRecorder(model, dtype, **kw) if backend == "torch"
                else JittorRecorder(model, dtype, **kw))
    recorder.attach()
    try:
        with (context() if context else contextlib.nullcontext()):
            loss, param_grads = recorder.run(inputs, loss_fn, backward)
    finally:
        recorder.detach()
    param_map = param_map or (lambda n: n)
    trace = Trace(backend, dtype, order=list(recorder.order), loss=loss, roots=list(recorder.roots),
                  parents=dict(recorder.calls.parents))
    trace.inputs = {n: recorder.numpy(x) for n, x in recorder.inputs.items() if _is_float(x)}
    trace.outputs = {n: recorder.numpy(x) for n, x in recorder.outputs.items()}
    if backward:
        for kind, name in recorder.watched:
            target = trace.input_grads if kind == "in" else trace.output_grads
            target[name] = recorder.numpy(recorder.grad_of(kind, name))
        if incoming is not None:  # the local pass: what arrived, not what was given
            for name in incoming:
                if name in trace.output_grads and module_of(name) not in trace.roots:
                    arrived = recorder.arriving.get(name)
                    trace.output_grads[name] = (np.zeros_like(trace.output_grads[name])
                                                if arrived is None else recorder.numpy(arrived))
        trace.param_grads = {param_map(n): recorder.numpy(g) for n, g in param_grads.items()}
    return trace
