"""The multi-tensor AdamW and clipping of the Jittor twin (jittor_impl/fused_optim.py) against
optim.py's exact loop: norms, weights and moments over several steps, on the CPU (their CPU
sources) and, marked gpu, on CUDA; checkpoints resume across the two; the switch that picks them;
and the count of ops an update runs."""
import re

import numpy as np
import pytest

from alignment.harness import jittor_on
from jittor_impl import fused_kernels, fused_optim, precision
from jittor_impl.fused_optim import ForeachAdamW, foreach_grad_norm_and_clip, norm_sources
from jittor_impl.optim import AdamW, grad_norm_and_clip
from jittor_impl.runtime import jt

# 40 tensors: more than one launch's 32, of LoRA's shapes and odd ones (one larger than a block)
SHAPES = [(4, 96), (192, 4)] * 18 + [(7,), (3, 1500), (1,), (5000,)]


@pytest.fixture(autouse=True)
def restore_mode():
    before = fused_kernels.fused_kernels_mode()
    yield
    fused_kernels.set_fused_kernels(before)


def _grads(rng, scale=10.0, shapes=SHAPES):
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]


def _dtypes(dtype):
    """Each tensor's dtype; "mixed": float32 and bfloat16 alternating, as a model with some bf16
    parameters has gradients of both dtypes (it broke the CUDA norm kernel's typed table)."""
    if dtype == "mixed":
        return ["bfloat16" if i % 3 == 1 else "float32" for i in range(len(SHAPES))]
    return [dtype] * len(SHAPES)


def _optimizer(cls, start, kw, dtype="float32"):
    params = [jt.array(a).cast(t) for a, t in zip(start, _dtypes(dtype))]
    groups = [{"params": params[:30]}, {"params": params[30:], "weight_decay": 0.0}]
    return cls(groups, **kw), params


def _step(opt, params, grads, clip, exact):
    """One accumulated backward (gradient = `grads`), clip, step; the norm as a float."""
    loss = sum((p.float32() * jt.array(g)).sum() for p, g in zip(params, grads))
    opt.backward(loss)
    norm = (grad_norm_and_clip if exact else foreach_grad_norm_and_clip)(opt, clip)
    opt.step()
    jt.sync(params)
    return float(norm.float32().numpy().reshape(-1)[0])


def _run(steps, kw, clip, dtype="float32", seed=0):
    """(exact optimizer, params, fused optimizer, params) after `steps` of the same gradients."""
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    fused_kernels.set_fused_kernels("on")
    ref, p_ref = _optimizer(AdamW, start, kw, dtype)
    fast, p_fast = _optimizer(ForeachAdamW, start, kw, dtype)
    for _ in range(steps):
        grads = _grads(rng)
        n_ref = _step(ref, p_ref, grads, clip, exact=True)
        n_fast = _step(fast, p_fast, grads, clip, exact=False)
        np.testing.assert_allclose(n_fast, n_ref, rtol=1e-5)
    return ref, p_ref, fast, p_fast


def _close(a, b, rtol=1e-5, atol=1e-6):
    for name in a:
        np.testing.assert_allclose(np.asarray(a[name], np.float64), np.asarray(b[name], np.float64),
                                   rtol=rtol, atol=atol, err_msg=name)


def _named(params):
    return {f"w{i}": p for i, p in enumerate(params)}


def _check_equal(steps, kw, clip, dtype="float32", rtol=1e-5, atol=1e-6):
    ref, p_ref, fast, p_fast = _run(steps, kw, clip, dtype)
    _close({k: v.float32().numpy() for k, v in _named(p_fast).items()},
           {k: v.float32().numpy() for k, v in _named(p_ref).items()}, rtol, atol)
    s_ref, s_fast = ref.state_numpy(_named(p_ref)), fast.state_numpy(_named(p_fast))
    assert sorted(s_ref) == sorted(s_fast)  # the same state, under the same names
    _close(s_fast, s_ref, rtol, atol)


@pytest.mark.parametrize("correct_bias,weight_decay,clip", [(True, 0.01, 1.0), (False, 0.0, 0.0),
                                                             (True, 0.1, 1e-3), (True, 0.0, 1e6)])
def test_fused_adamw_equals_exact_loop_cpu(correct_bias, weight_decay, clip):
    kw = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=weight_decay,
              correct_bias=correct_bias)
    _check_equal(5, kw, clip)


def test_fused_adamw_bf16_weights_cpu():
    """bf16 weights and gradients: the clip rounds to bf16 as the exact path's product does; the
    weights differ by at most bf16's rounding of the same float32 update."""
    kw = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, correct_bias=True)
    _check_equal(3, kw, 1.0, dtype="bfloat16", rtol=1e-2, atol=1e-2)


def test_fused_adamw_mixed_dtypes_cpu():
    """Gradients of two dtypes in one group: each kernel table holds one dtype, and the result is
    the exact loop's."""
    kw = dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, correct_bias=True)
    _check_equal(3, kw, 1.0, dtype="mixed", rtol=1e-2, atol=1e-2)


def test_norm_tables_hold_one_dtype():
    """The CUDA source of the global norm: every table's gradients share the dtype its template
    names, and every tensor is summed once (the CUDA compiler rejects a bf16 pointer in a float
    table; the CPU source, one call per tensor, never showed it)."""
    dtypes = _dtypes("mixed")
    grads = [jt.zeros(s).cast(t) for s, t in zip(SHAPES, dtypes)]
    cuda, _, partials = norm_sources(grads)
    seen = []
    for table in re.findall(r"NormTable<in(\d+)_type>(.*?)}", cuda, re.S):
        first, body = int(table[0]), table[1]
        members = [int(i) for i in re.findall(r"t\.g\[\d+\] = in(\d+)_p", body)]
        assert {dtypes[i] for i in members} == {dtypes[first]}
        seen += members
    assert sorted(seen) == list(range(len(SHAPES)))
    assert cuda.count("NormTable<") == 2  # one table of 27 float32 gradients, one of 13 bf16
    assert partials == sum(-(-int(np.prod(s)) // 4096) for s in SHAPES)


def test_full_finetuning_sized_group_cpu(monkeypatch):
    """250 tensors in one group (full fine-tuning of gpt2.md trains 292): one op of them all would
    have 1,001 inputs, which Jittor's JIT cannot compile, so the update is split into ops of 192
    tensors; the norm's split (past 960 gradients) is exercised at 100. Both equal the exact loop."""
    monkeypatch.setattr(fused_optim, "_GRADS_PER_OP", 100)
    rng = np.random.default_rng(11)
    shapes = [(3,), (2, 5)] * 125
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    kw = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, correct_bias=True)
    grad_rng = np.random.default_rng(12)
    steps = [_grads(grad_rng, shapes=shapes) for _ in range(2)]
    fused_kernels.set_fused_kernels("on")
    runs = []
    for cls, exact in ((AdamW, True), (ForeachAdamW, False)):
        params = [jt.array(a) for a in start]
        opt = cls([{"params": params}], **kw)
        norms = [_step(opt, params, grads, 1.0, exact) for grads in steps]
        runs.append((norms, [p.numpy() for p in params]))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5)
    for fast, ref in zip(runs[1][1], runs[0][1]):
        np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)


def test_checkpoint_resumes_across_the_two_paths_cpu():
    """Moments saved by the fused optimizer load into the exact one and vice versa, and the
    runs continue as one."""
    kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, correct_bias=True)
    ref, p_ref, fast, p_fast = _run(2, kw, 1.0)
    fresh_exact, p1 = _optimizer(AdamW, [p.numpy() for p in p_fast], kw)
    fresh_exact.load_state_numpy(_named(p1), fast.state_numpy(_named(p_fast)))
    fresh_fused, p2 = _optimizer(ForeachAdamW, [p.numpy() for p in p_ref], kw)
    fresh_fused.load_state_numpy(_named(p2), ref.state_numpy(_named(p_ref)))
    rng = np.random.default_rng(7)
    for _ in range(2):
        grads = _grads(rng)
        _step(fresh_exact, p1, grads, 1.0, exact=True)
        _step(fresh_fused, p2, grads, 1.0, exact=False)
    _close({k: v.numpy() for k, v in _named(p2).items()}, {k: v.numpy() for k, v in _named(p1).items()})
    _close(fresh_fused.state_numpy(_named(p2)), fresh_exact.state_numpy(_named(p1)))


def test_exact_loop_off_the_fused_path_cpu():
    """"auto" on the CPU, or in fp32 anywhere: both names are optim.py's loop (same bits)."""
    kw = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, correct_bias=True)
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    fused_kernels.set_fused_kernels("auto")
    ref, p_ref = _optimizer(AdamW, start, kw)
    fast, p_fast = _optimizer(ForeachAdamW, start, kw)
    for _ in range(3):
        grads = _grads(rng)
        with precision.autocast("bfloat16"):  # mixed precision, but not on CUDA
            assert _step(ref, p_ref, grads, 1.0, exact=True) == _step(fast, p_fast, grads, 1.0,
                                                                      exact=False)
    for a, b in zip(p_ref, p_fast):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert fast.pending_clip is None


def _executed_ops(update):
    """Ops Jittor runs for `update()` (its profiler's per-op counts, summed)."""
    jt.sync_all(True)
    with jt.profile_scope(warmup=0, rerun=0) as report:
        update()
        jt.sync_all(True)
    header, rows = report[0], report[1:]
    count = header.index("Count")
    return sum(int(r[count]) for r in rows)


def test_fused_update_runs_a_handful_of_ops_cpu():
    """The exact loop runs several ops per tensor; the fused one a norm op and one op per
    parameter group (counted at the second update: the first also creates the moments)."""
    kw = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, correct_bias=True)
    rng = np.random.default_rng(5)
    start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    fused_kernels.set_fused_kernels("on")
    counts = {}
    for name, cls, exact in (("exact", AdamW, True), ("fused", ForeachAdamW, False)):
        opt, params = _optimizer(cls, start, kw)

        def update():
            (grad_norm_and_clip if exact else foreach_grad_norm_and_clip)(opt, 1.0)
            opt.step()
            jt.sync(params)
        for step in range(2):
            opt.backward(sum((p * jt.array(g)).sum() for p, g in zip(params, _grads(rng))))
            jt.sync_all(True)
            counts[name] = _executed_ops(update)
    print(f"ops per update over {len(SHAPES)} tensors in 2 groups: {counts}")
    assert counts["fused"] == 3 and counts["exact"] >= 4 * len(SHAPES)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "mixed"])
def test_fused_adamw_equals_exact_loop_cuda(dtype):
    with jittor_on("cuda"):
        if not jt.flags.use_cuda:
            pytest.skip("no CUDA")
        kw = dict(lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, correct_bias=True)
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
        _check_equal(4, kw, 1.0, dtype=dtype, **tol)
        fused_kernels.set_fused_kernels("auto")  # auto: fused on CUDA inside autocast only
        with precision.autocast("bfloat16"):
            assert fused_kernels.wanted(jt.zeros([1]), "optimizer")
        assert not fused_kernels.wanted(jt.zeros([1]), "optimizer")
