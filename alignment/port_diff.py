"""`auto_diff` (exported as `alignment.auto_diff`): hand in a PyTorch model, its Jittor port
and an input; be told where they part.

    import alignment
    result = alignment.auto_diff(torchvision.models.resnet18(), jittor.models.resnet18(), (images,))
    result.first_divergence   # {"forward": None, "backward": None, "buffers": None, "steps": None}

What it does, in order:
1. copies torch's parameters and buffers into the port by name and shape
   (alignment.weight_transfer.assign_weights; `layer_map` names what differs);
2. sets both models' mode (`train`), keeps the port's trainable parameters trainable in eval
   (Jittor's `eval()` stops every gradient) and turns dropout off;
3. records every floating tensor among each submodule's inputs (positional and keyword, in
   tuples, lists and dicts too: `M` for the one input of a call, `M.in[1]`, `M.in["mask"]`
   for several) and every tensor of its output (`M`, or `M.out[0]`, `M.out["key"]`), and the
   gradients w.r.t. them and every parameter, in torch fp32, in Jittor and in torch float64
   (the yardstick), at hook time (alignment.model_trace: safe against in-place operations and
   aliases, and each module's input gradient is its own contribution);
4. compares every tensor by the noise-floor rule (alignment.compare: Jittor's error against
   float64 within k times torch fp32's own + 4 unit roundoffs) and localizes the first forward
   divergence (the deepest module whose inputs agree and whose output does not; when a
   module's input is the first value to part, the call enclosing it, whose own code computed
   that input) and backward divergence (the deepest whose own gradient w.r.t. one of its
   inputs, from the reference's gradient at its output, does not agree; else the call
   enclosing the first output whose arriving gradient does not, for code that is no
   submodule, such as a tied head);
   gives no backward verdict once the forward has diverged; recognises rounding-induced kink
   flips (alignment.kink_flips) and reports them as such, not as a divergence;
5. compares buffers after the forward (BatchNorm's running statistics in train mode), and
   weights, buffers and optimizer state after each of `steps` optimizer steps;
6. writes auto_diff.{md,json,png} to `out_dir` when given.

k is measured per model family, not carried over from GPT-2 (K_DEFAULT, K_TRAIN_BATCHNORM).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, field

import numpy as np

from .compare import FLOORS, K_BF16, check_tensor, compare_traces
from .kink_flips import flip, sparse_difference
from .model_trace import first_tensor, module_of, record
from .weight_transfer import assign_weights, module_names

# The noise-floor factor per model family, from the largest ratio of Jittor's error against
# float64 to torch fp32's over every tensor whose torch error is above the floor, measured on the
# clean ports by scripts/auto_diff_ports.py (CPU, 3 seeds, 2 images of 64x64; the table in
# logs/auto-diff-cpu/ports.md) with a margin of 2 or more: eval mode (ResNet-18, MobileNetV2,
# GPT-2) at most about 4x; BatchNorm in train mode far more, because Jittor computes the batch
# variance as E[x^2] - E[x]^2 and its means by plain float32 sums.
K_DEFAULT = 8.0  # GPT-2's (alignment/compare.py), which the ports in eval mode also keep to
K_TRAIN_BATCHNORM = 64.0  # a model with BatchNorm in train mode (Jittor's batch statistics)
GRADIENT_KINDS = ("output_grads", "input_grads", "param_grads")
LOCAL_KINDS = ("local_input_grads", "local_param_grads", "local_output_grads")
LOSS = "loss"  # the backward verdict when the loss functions' gradients differ
OPTIMIZER_STATE = {"momentum_buffer": "values", "exp_avg": "m", "exp_avg_sq": "values"}


@dataclass
class AutoDiffResult:
    """What auto_diff found. `first_divergence`: {"forward", "backward", "buffers", "steps"}, each
    a module name (steps: "step N: tensor") or None; `records`: one per compared tensor
    (alignment.compare.check_tensor's fields, plus "explained" for a failure a kink flip
    accounts for); `kink_flips`: the flips recognised; `notes`: verdicts not given, and why."""
    first_divergence: dict
    passed: bool
    records: list = field(default_factory=list)
    kink_flips: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    rule: dict = field(default_factory=dict)
    forward_order: list = field(default_factory=list)
    per_module: dict = field(default_factory=dict)
    skipped_weights: list = field(default_factory=list)
    train: bool = False
    steps: int = 0

    def failing(self, kind=None) -> list:
        return [r for r in self.records if not r["passed"] and not r.get("explained")
                and (kind is None or r["kind"] == kind)]

    def to_json(self) -> dict:
        return asdict(self)


PLAIN = (bool, int, float, str, type(None))  # input values passed to the models as they are


def _input(value):
    return value if isinstance(value, PLAIN) else np.asarray(value)


def split_inputs(inputs):
    """((positional arrays), {keyword arrays}) from a tuple/list, a dict or one array; Python
    values (a flag, a number, None) among them are passed to both models as they are."""
    if isinstance(inputs, dict):
        return (), {k: _input(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(_input(v) for v in inputs), {}
    if isinstance(inputs, np.ndarray):
        return (inputs,), {}
    raise TypeError("inputs: a tuple of positional numpy arrays or a dict of keyword arrays, "
                    f"not {type(inputs).__name__}")


def _mean_of_output(out):
    return first_tensor(out, lambda x: hasattr(x, "shape") and hasattr(x, "dtype")).mean()


def loss_functions(loss_fn):
    """(torch loss, Jittor loss) from None (the mean of the first output), one callable valid on
    both frameworks' outputs, or a (torch_fn, jittor_fn) pair."""
    if loss_fn is None:
        return _mean_of_output, _mean_of_output
    if isinstance(loss_fn, (tuple, list)):
        if len(loss_fn) != 2 or not all(callable(f) for f in loss_fn):
            raise TypeError("loss_fn: one callable or a (torch_fn, jittor_fn) pair")
        return tuple(loss_fn)
    if not callable(loss_fn):
        raise TypeError("loss_fn: one callable or a (torch_fn, jittor_fn) pair")
    return loss_fn, loss_fn


def _is_dropout(module) -> bool:
    return "Dropout" in type(module).__name__


@contextlib.contextmanager
def prepared(torch_models, jittor_model, train: bool):
    """Both frameworks' models in train or eval mode, dropout off, the port's trainable
    parameters trainable (Jittor's eval() stops them); dropout and gradients restored after."""
    trainable = [p for _, p in jittor_model.named_parameters() if not p.is_stop_grad()]
    for model in torch_models:
        model.train(train)
    jittor_model.train() if train else jittor_model.eval()
    for p in trainable:
        p.start_grad()
    dropouts = [m for model in torch_models for m in model.modules() if _is_dropout(m)]
    for m in dropouts:
        m.eval()
    jittor_dropouts = [(m, m.is_train) for _, m in jittor_model.named_modules() if _is_dropout(m)]
    for m, _ in jittor_dropouts:
        m.is_train = False
    try:
        yield
    finally:
        for m in dropouts:
            m.train(train)
        for m, was in jittor_dropouts:
            m.is_train = was


def _module_index(order):
    index = {}
    for i, name in enumerate(order):
        index.setdefault(name, i)
        index.setdefault(name.split("#")[0], i)
    return index


def _owner(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def _record_position(record, index, order):
    """Forward position of what a record belongs to (a parameter or buffer: its module)."""
    name = module_of(record["name"])
    if name in index or name.split("#")[0] in index:
        return index.get(name, index.get(name.split("#")[0]))
    if name.startswith("input."):
        return -1
    owner = _owner(name)
    while owner and owner not in index:
        owner = _owner(owner) if "." in owner else ""
    return index.get(owner, len(order))


def _local_records(tl, jl, ref, k, floor):
    """The local pass compared: each module's own input gradient and each parameter's gradient,
    both on the reference's incoming gradients (alignment.model_trace.record's `incoming`), and
    the gradient that arrives at each module's output from its consumers (the root's outputs
    excepted: theirs is the loss function's)."""
    records = []
    for name, r in ref.output_grads.items():
        if module_of(name) not in ref.roots:
            records.append(check_tensor(name, jl.output_grads.get(name), tl.output_grads.get(name),
                                        r, k=k, floor=floor, kind="local_output_grads"))
    for name, r in ref.input_grads.items():
        records.append(check_tensor(name, jl.input_grads.get(name), tl.input_grads.get(name), r,
                                    k=k, floor=floor, kind="local_input_grads"))
    for name, r in ref.param_grads.items():
        records.append(check_tensor(name, jl.param_grads.get(name), tl.param_grads.get(name), r,
                                    k=k, floor=floor, kind="local_param_grads"))
    return records


def _forward_verdict(verdict, records, parents, roots):
    """alignment.compare's forward verdict, except where the module it names received a failing
    input that no module before it produced: then the code that computed that input is at fault,
    its enclosing call's own code (the root's, for code in the model's forward)."""
    if verdict is None or verdict in roots:
        return verdict
    if any(r["kind"] == "inputs" and not r["passed"] and module_of(r["name"]) == verdict
           for r in records):
        return parents.get(verdict) or (roots[0] if roots else verdict)
    return verdict


def _backward_verdict(result, local, traces, torch_model, order):
    """The deepest call, in backward order, whose own gradient w.r.t. one of its inputs (local
    pass) fails, else the owner of the first failing local parameter gradient, else None. A
    failure that is a kink flip (alignment.kink_flips) is recorded as such and marked explained,
    with the modules around it that pass on the same input (a Sequential whose first child it
    is)."""
    j, ref, jl, tl = traces
    modules = dict(torch_model.named_modules())
    inputs = [r for r in local if r["kind"] == "local_input_grads"]

    def failing(call=None):
        return [r for r in inputs if not r["passed"] and not r.get("explained")
                and (call is None or module_of(r["name"]) == call)]
    while True:
        candidates = {module_of(r["name"]) for r in failing()}
        found = next((name for name in order[::-1] if name in candidates and not any(
            c != name and c.split("#")[0].startswith(name.split("#")[0] + ".") for c in candidates)),
            None)
        if found is None:
            break
        bad = failing(found)
        x = bad[0]["name"]  # a kinked module (an activation, a pooling) takes one input
        flipped = None if len(bad) > 1 else flip(
            modules.get(found.split("#")[0]), j.inputs.get(x), ref.inputs.get(x),
            jl.input_grads.get(x), ref.input_grads.get(x), tl.input_grads.get(x))
        if flipped is None:
            return found
        result.kink_flips.append(dict(flipped, module=found))
        bad[0]["explained"] = f"kink flip at {found}"
        for name in candidates - {found}:  # a module around it, where the flipped elements
            if not found.split("#")[0].startswith(name.split("#")[0] + "."):
                continue  # pass through (an identity path)
            for r in failing(name):
                if sparse_difference(jl.input_grads.get(r["name"]), ref.input_grads.get(r["name"]),
                                     tl.input_grads.get(r["name"])) is not None:
                    r["explained"] = f"kink flip at {found}"
    arrived = _consumer_verdict(result, local, traces, order)
    if arrived is not None:
        return arrived
    bad = [r["name"] for r in local if r["kind"] == "local_param_grads" and not r["passed"]]
    return _owner(bad[0]) if bad else None


def _consumer_verdict(result, local, traces, order):
    """When every module's own input gradient agrees but the gradient arriving at some module's
    output does not, the backward at fault is in the code that read that output and is no
    submodule: its enclosing call's own code (the root's, named by its first output, for a tied
    head). The first such output in backward order decides; a sparse difference after a
    recognised kink flip is the flip's, not a fault."""
    j, ref, jl, tl = traces
    failing = {}
    for r in local:
        if r["kind"] == "local_output_grads" and not r["passed"] and not r.get("explained"):
            if result.kink_flips and sparse_difference(
                    jl.output_grads.get(r["name"]), ref.output_grads.get(r["name"]),
                    tl.output_grads.get(r["name"])) is not None:
                r["explained"] = f"kink flip at {result.kink_flips[0]['module']}"
                continue
            failing.setdefault(module_of(r["name"]), r)
    for call in order[::-1]:
        if call in failing:
            return ref.parents.get(call) or (ref.roots[0] if ref.roots else None)
    return None


@contextlib.contextmanager
def _buffers_kept(torch_model, jittor_model):
    """Both models' buffers as they were on entry, whatever the block's forward passes did to
    them (train-mode BatchNorm updates its running statistics)."""
    saved = {n: b.detach().clone() for n, b in torch_model.named_buffers()}
    jittor_saved = [(v, v.numpy().copy()) for v in jittor_model.state_dict().values()
                    if v.is_stop_grad()]
    try:
        yield
    finally:
        for n, b in torch_model.named_buffers():
            b.data.copy_(saved[n])
        for var, value in jittor_saved:
            var.assign(value)
            var.stop_grad()


def _buffer_records(torch_model, jittor_model, ref_model, mapping, k, floor, kind, suffix=""):
    tb, rb = dict(torch_model.named_buffers()), dict(ref_model.named_buffers())
    js = jittor_model.state_dict()
    records = []
    for name in mapping.buffers:
        if not tb[name].is_floating_point():
            continue
        records.append(check_tensor(name + suffix, js[mapping.pairs[name]].numpy(),
                                    tb[name].detach().double().numpy(),
                                    rb[name].detach().double().numpy(), k=k, floor=floor, kind=kind))
    return records


def _first_owner(records, order):
    index = _module_index(order)
    bad = [r for r in records if not r["passed"]]
    if not bad:
        return None
    return _owner(min(bad, key=lambda r: _record_position(r, index, order))["name"])


def _run_steps(torch_model, jittor_model, ref_model, mapping, split, losses, optimizers, steps,
               k, floor):
    """`steps` optimizer steps on all three models; records of weights, buffers and optimizer
    state after each, and the first failing one ("step N: tensor")."""
    import torch
    from jittor_impl.runtime import jt
    if not (isinstance(optimizers, (tuple, list)) and len(optimizers) == 2
            and all(callable(f) for f in optimizers)):
        raise TypeError("optimizers: a (torch_factory, jittor_factory) pair, each called with "
                        "its model's trainable parameters")
    torch_params = [p for p in torch_model.parameters() if p.requires_grad]
    topt, ropt = optimizers[0](torch_params), optimizers[0](
        [p for p in ref_model.parameters() if p.requires_grad])
    jittor_named = {jn: p for jn, p in jittor_model.named_parameters() if not p.is_stop_grad()}
    jopt = optimizers[1](list(jittor_named.values()))
    args, kw = split
    jstate = jittor_model.state_dict()
    torch_names = {id(p): n for n, p in torch_model.named_parameters()}
    jittor_names = {id(p): n for n, p in jittor_model.named_parameters()}
    records, first = [], None
    for step in range(1, steps + 1):
        for model, opt, dtype in ((torch_model, topt, torch.float32), (ref_model, ropt, torch.float64)):
            opt.zero_grad()
            tin = lambda a: a if isinstance(a, PLAIN) else (  # noqa: E731
                torch.as_tensor(a).to(dtype) if np.issubdtype(a.dtype, np.floating) else torch.as_tensor(a))
            out = model(*[tin(a) for a in args], **{n: tin(a) for n, a in kw.items()})
            losses[0](out).backward()
            opt.step()
        jin = lambda a: a if isinstance(a, PLAIN) else jt.array(  # noqa: E731
            a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a)
        jopt.step(losses[1](jittor_model(*[jin(a) for a in args], **{n: jin(a) for n, a in kw.items()})))
        jt.sync_all(True)
        suffix = f"@{step}"
        here = []
        tstate, rstate = torch_model.state_dict(), ref_model.state_dict()
        for name, target in mapping.pairs.items():
            if name in mapping.buffers:
                continue
            here.append(check_tensor(name + suffix, jstate[target].numpy(),
                                     tstate[name].detach().double().numpy(),
                                     rstate[name].detach().double().numpy(), k=k, floor=floor,
                                     kind="step_weights"))
        here += _buffer_records(torch_model, jittor_model, ref_model, mapping, k, floor,
                                "step_buffers", suffix)
        here += _optimizer_records(topt, ropt, jopt, torch_names, jittor_names, mapping, k, floor,
                                   suffix)
        records += here
        bad = [r for r in here if not r["passed"]]
        if first is None and bad:
            first = f"step {step}: {bad[0]['name'].rsplit('@', 1)[0]} ({bad[0]['kind']})"
    return records, first


def _optimizer_records(topt, ropt, jopt, torch_names, jittor_names, mapping, k, floor, suffix):
    """torch's per-parameter optimizer state against the Jittor optimizer's lists (SGD momentum,
    Adam/AdamW moments: OPTIMIZER_STATE names them)."""
    jittor_state = {}
    for group in jopt.param_groups:
        for i, p in enumerate(group["params"]):
            for tkey, jkey in OPTIMIZER_STATE.items():
                if jkey in group and i < len(group[jkey]):
                    jittor_state[(jittor_names.get(id(p)), tkey)] = group[jkey][i]
    records = []
    ref_state = list(ropt.state.values())
    for i, (p, state) in enumerate(topt.state.items()):
        name = torch_names.get(id(p))
        for key, value in state.items():
            if key not in OPTIMIZER_STATE or not hasattr(value, "shape") or value.shape != p.shape:
                continue
            jvar = jittor_state.get((mapping.pairs.get(name), key))
            if jvar is None:
                continue
            records.append(check_tensor(f"{name}.{key}{suffix}", jvar.numpy(),
                                        value.detach().double().numpy(),
                                        ref_state[i][key].detach().double().numpy(), k=k,
                                        floor=floor, kind="step_optimizer"))
    return records


def _worst(current, err, record):
    """The larger error; None (written as null) once a value was non-finite or missing."""
    if current is None or (err is None and not record["passed"]):
        return None
    return current if err is None else max(current, err)


def per_module(records, rows=None) -> dict:
    """{call: {"outputs": [torch err, jittor err], "output_grads": [...]}}: the worst error
    against float64 over the call's output tensors (and over the records of several runs when
    `rows` carries on from earlier ones), for the report's table and plot."""
    rows = {} if rows is None else rows
    for r in records:
        if r["kind"] in ("outputs", "output_grads"):
            row = rows.setdefault(module_of(r["name"]),
                                  {"outputs": [0.0, 0.0], "output_grads": [0.0, 0.0]})
            row[r["kind"]] = [max(row[r["kind"]][0], r["err_base"] or 0.0),
                              _worst(row[r["kind"]][1], r["err_test"], r)]
    return rows


def auto_diff(torch_model, jittor_model, inputs, loss_fn=None, train: bool = False, steps: int = 0,
              optimizers=None, layer_map=None, out_dir: str = None, k: float = None,
              title: str = "auto_diff: a PyTorch model and its Jittor port", methods=(),
              output_names=(), precision: str = "fp32", contexts=None) -> AutoDiffResult:
    """Where `jittor_model` (a Jittor port) parts from `torch_model` on `inputs` (see module
    doc). `inputs`: a tuple of positional numpy arrays or a dict of keyword arrays; `loss_fn`:
    one callable valid on both outputs or a (torch_fn, jittor_fn) pair (default: the mean of
    the output); `optimizers`: a (torch_factory, jittor_factory) pair for `steps` > 0, each
    called with its model's trainable parameters; `layer_map`: torch -> Jittor names (see
    alignment.weight_transfer); `k`: the noise-floor factor (default K_DEFAULT, or
    K_TRAIN_BATCHNORM for a model with BatchNorm in train mode).

    `methods`: names of methods recorded like submodules where a model has them (a computation
    that is no module, e.g. LoRA's branch); `output_names`: names of the root's output tensors
    in order (the root's own code is then blamed under the first); `precision` "bf16" judges by
    the bf16 rule (alignment.compare's K_BF16 and floor) and `contexts`, a (torch, Jittor) pair
    of context-manager factories (their autocasts), is entered around the torch and Jittor runs,
    not the float64 reference's. The torch inputs go to the torch model's device."""
    split = split_inputs(inputs)
    losses = loss_functions(loss_fn)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, not {steps}")
    if steps and optimizers is None:
        raise TypeError("steps > 0 needs optimizers=(torch_factory, jittor_factory)")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
    contexts = contexts or (None, None)
    mapping = assign_weights(torch_model, jittor_model, layer_map)
    ref_model = copy.deepcopy(torch_model).double()
    if k is None:
        batch_norm = any("BatchNorm" in type(m).__name__ for m in torch_model.modules())
        k = K_BF16 if precision == "bf16" else (
            K_TRAIN_BATCHNORM if train and batch_norm else K_DEFAULT)
    floor = FLOORS["bfloat16" if precision == "bf16" else "float32"]
    to_torch = {j: t for t, j in mapping.pairs.items()}
    names = dict(methods=tuple(methods), output_names=tuple(output_names))
    torch_kw = dict(names, context=contexts[0])
    jittor_kw = dict(names, param_map=lambda n: to_torch.get(n, n), context=contexts[1],
                     module_map=module_names(torch_model, layer_map))
    with prepared((torch_model, ref_model), jittor_model, train):
        t = record("torch", torch_model, split, losses[0], **torch_kw)
        j = record("jittor", jittor_model, split, losses[1], **jittor_kw)
        ref = record("torch", ref_model, split, losses[0], dtype="float64", **names)
        t.precision = j.precision = precision
        comparison = compare_traces(j, t, ref, k=k, floor=floor)
        order = list(t.order)
        result = AutoDiffResult(first_divergence=dict(comparison.first_divergence),
                                passed=False, records=comparison.records,
                                rule=dict(comparison.rule), forward_order=order,
                                skipped_weights=list(mapping.skipped), train=train, steps=steps)
        buffers = _buffer_records(torch_model, jittor_model, ref_model, mapping, k, floor, "buffers")
        with _buffers_kept(torch_model, jittor_model):  # the local pass runs the forward again
            tl = record("torch", torch_model, split, losses[0], incoming=ref.output_grads,
                        **torch_kw)
            jl = record("jittor", jittor_model, split, losses[1], incoming=ref.output_grads,
                        **jittor_kw)
        local = _local_records(tl, jl, ref, k, floor)
        result.records += local
        fd = result.first_divergence
        fd["forward"] = _forward_verdict(fd["forward"], result.records, ref.parents, ref.roots)
        if fd["forward"] is not None:
            fd["backward"] = None
            result.notes.append(f"backward not judged: the forward pass already parts at "
                                f"{fd['forward']}, so the gradients differ too")
            why = f"after the forward divergence at {fd['forward']}"
        elif not all(r["passed"] for r in result.records
                     if r["kind"] == "output_grads" and module_of(r["name"]) in t.roots):
            fd["backward"] = LOSS  # the gradient every module's backward starts from
            result.notes.append("the two loss functions' gradients w.r.t. the output differ")
            why = "after the loss function's gradient"
        else:
            fd["backward"] = _backward_verdict(result, local, (j, ref, jl, tl), torch_model, order)
            why = "each module's own gradient agrees (local pass): the difference accumulates " \
                  "over the backward pass" + (" through a kink flip" if result.kink_flips else "")
        if fd["backward"] in (None, LOSS):  # the verdict is the local pass's; the end-to-end gradients
            for r in result.records:  # differ by accumulation (or after a forward divergence)
                if r["kind"] in GRADIENT_KINDS + LOCAL_KINDS and not r["passed"] and \
                        not r.get("explained") and not (r["kind"] == "output_grads" and
                                                        module_of(r["name"]) in t.roots):
                    r["explained"] = why
        for flipped in result.kink_flips:
            result.notes.append(f"kink flip at {flipped['module']} ({flipped['module_type']}: "
                                f"{flipped['elements']} of {flipped['size']} elements of its "
                                "gradient differ, each where rounding put the input on the other "
                                "side of a kink)")
        result.records += buffers
        fd["buffers"] = _first_owner(buffers, order)
        fd["steps"] = None
        if steps:
            step_records, fd["steps"] = _run_steps(torch_model, jittor_model, ref_model, mapping,
                                                   split, losses, optimizers, steps, k, floor)
            result.records += step_records
    result.passed = not result.failing()
    result.per_module = per_module(result.records)
    if out_dir:
        from .port_diff_report import write
        write(result, out_dir, title)
    return result


