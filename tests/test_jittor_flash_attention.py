"""The fused causal attention of the Jittor twin (jittor_impl/flash_attention.py) against the exact
path (the reference's formula in float32, as ops.fused_attention computes it outside mixed
precision): output and the gradients of q, k and v, for training shapes (Tq == Tk), cached
decoding (Tq < Tk) and per-row key lengths (`len_kv`); on the CPU (the kernels' CPU source) and,
marked gpu, on CUDA (the CUDA source), where it is also checked against the CPU source."""
import numpy as np
import pytest

from alignment.harness import jittor_on
from jittor_impl import flash_attention, fused_kernels, ops, precision
from jittor_impl.runtime import jt


@pytest.fixture(autouse=True)
def restore_mode():
    before = fused_kernels.fused_kernels_mode()
    yield
    fused_kernels.set_fused_kernels(before)


def _inputs(b, h, tq, tk, d, seed):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, h, tq, d)).astype(np.float32)
    k = rng.normal(size=(b, h, tk, d)).astype(np.float32)
    v = rng.normal(size=(b, h, tk, d)).astype(np.float32)
    g = rng.normal(size=(b, h, tq, d)).astype(np.float32)
    return q, k, v, g


def _attention(mode, q, k, v, g, len_kv=None, autocast=None):
    """Output and (dq, dk, dv) of ops.fused_attention in fused-kernel `mode`, as float32 numpy."""
    fused_kernels.set_fused_kernels(mode)
    with precision.autocast(autocast):
        qj, kj, vj = jt.array(q), jt.array(k), jt.array(v)
        lens = None if len_kv is None else jt.array(np.asarray(len_kv, dtype=np.int32))
        out = ops.fused_attention(qj, kj, vj, len_kv=lens)
        grads = jt.grad((out.float32() * jt.array(g)).sum(), [qj, kj, vj])
        return [x.float32().numpy() for x in [out] + list(grads)]


def _numpy_reference(q, k, v, g, len_kv=None):
    """The same function in float64 numpy (independent of both Jittor paths)."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(d)
    allowed = np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)
    allowed = np.broadcast_to(allowed, (b, 1, tq, tk))
    if len_kv is not None:
        allowed = allowed & (np.arange(tk)[None, None, None, :] < np.asarray(len_kv)[:, None, None, None])
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dp = g @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    return out, ds @ k / np.sqrt(d), ds.transpose(0, 1, 3, 2) @ q / np.sqrt(d), p.transpose(0, 1, 3, 2) @ g


def _close(got, want, rel, names=("out", "dq", "dk", "dv")):
    for name, a, b in zip(names, got, want):
        assert np.isfinite(a).all(), name
        err = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert err < rel, f"{name}: relative L2 error {err:.2e} >= {rel}"


CASES = [  # (B, H, Tq, Tk, D, len_kv)
    (2, 2, 70, 70, 64, None),      # training: two query/key tiles, a partial one
    (1, 3, 5, 133, 32, None),      # decoding: the last 5 of 133 positions
    (3, 2, 1, 80, 16, [80, 9, 41]),  # one new token per row against a preallocated cache
]


@pytest.mark.parametrize("case", CASES)
def test_flash_attention_cpu_matches_exact_path(case):
    b, h, tq, tk, d, len_kv = case
    q, k, v, g = _inputs(b, h, tq, tk, d, seed=tk)
    exact = _attention("off", q, k, v, g, len_kv)  # float32: the reference's formula
    _close(exact, _numpy_reference(q, k, v, g, len_kv), 1e-5)
    fused = _attention("on", q, k, v, g, len_kv, autocast="bfloat16")
    _close(fused, exact, 2e-2)  # bf16 operands, float32 sums


def test_flash_attention_switch():
    q = jt.ones((1, 2, 8, 16))
    fused_kernels.set_fused_kernels("auto")
    with precision.autocast("bfloat16"):
        assert fused_kernels.wanted(q, "attention") == bool(jt.flags.use_cuda)
    assert flash_attention.supported(q.cast("bfloat16"), q, q)
    assert not flash_attention.supported(q, q, q)  # float32 outside autocast: the exact path
    assert not flash_attention.supported(jt.ones((1, 2, 8, 12)).cast("bfloat16"), q, q)  # head dim 12
    with pytest.raises(ValueError, match="flash_attention: needs 16-bit compute"):
        flash_attention.flash_attention(q, q, q)


def test_fp32_default_attention_is_the_math_path():
    """Outside mixed precision the default ("sdpa") computes what "math" does, bit for bit."""
    from jittor_impl.model import GPT2LMModel
    from shared.model.config import GPT2Config
    fused_kernels.set_fused_kernels("auto")
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, lora_attn_dim=2)
    model = GPT2LMModel(config)
    ids = jt.array(np.random.default_rng(0).integers(0, 64, size=(2, 9)).astype(np.int64))
    outs = {}
    for impl in ("math", "sdpa"):
        model.set_attention(impl)
        outs[impl] = model(ids)[0].numpy()
    np.testing.assert_array_equal(outs["sdpa"], outs["math"])


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES + [(4, 16, 512, 512, 64, None), (2, 4, 200, 200, 128, None)])
def test_flash_attention_cuda(case):
    """The CUDA source against the float32 exact path (on CUDA), and against the CPU source with
    the same roundings: the two differ only in the order of float32 sums and exp's last bits."""
    b, h, tq, tk, d, len_kv = case
    q, k, v, g = _inputs(b, h, tq, tk, d, seed=tk + 1)
    with jittor_on("cuda"):
        exact = _attention("off", q, k, v, g, len_kv)
        fused = _attention("auto", q, k, v, g, len_kv, autocast="bfloat16")
    _close(fused, exact, 2e-2)
    if b * h * tq * tk <= 200_000:
        _close(fused, _attention("on", q, k, v, g, len_kv, autocast="bfloat16"), 5e-3)


def _qkv_attention(mode, qkv, g, n_head, autocast=None, dtype="float32"):
    """Output and dqkv of ops.qkv_attention (the fused projection's output, packed, stored as
    `dtype`) in fused-kernel `mode`, as float32 numpy."""
    fused_kernels.set_fused_kernels(mode)
    with precision.autocast(autocast):
        x = jt.array(qkv).cast(dtype)
        out = ops.qkv_attention(x, n_head)  # divisor None: sqrt(D)
        (grad,) = jt.grad((out.float32() * jt.array(g)).sum(), [x])
        return [out.float32().numpy(), grad.float32().numpy()]


PACKED_CASES = [(2, 70, 2, 64), (1, 9, 3, 32)]  # (B, T, H, D)


def _split_heads(x, h):
    """(B, T, H * D) -> (B, H, T, D)."""
    b, t, c = x.shape
    return x.reshape(b, t, h, c // h).transpose(0, 2, 1, 3)


def _merge_heads(x):
    """(B, H, T, D) -> (B, T, H * D)."""
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


@pytest.mark.parametrize("case", PACKED_CASES)
def test_packed_flash_attention_cpu_matches_exact_path(case):
    """The packed kernels read q, k, v in place from (B, T, 3C) and write (B, T, C): the same
    function as splitting the heads (exact path), and the same roundings as the separate kernels."""
    b, t, h, d = case
    rng = np.random.default_rng(t)
    qkv = rng.normal(size=(b, t, 3 * h * d)).astype(np.float32)
    g = rng.normal(size=(b, t, h * d)).astype(np.float32)
    exact = _qkv_attention("off", qkv, g, h)
    packed = _qkv_attention("on", qkv, g, h, autocast="bfloat16")
    _close(packed, exact, 2e-2, names=("out", "dqkv"))
    # the separate kernels on the same q, k, v: equal up to the packed output's bf16 rounding
    q, k, v = (_split_heads(x, h) for x in np.split(qkv, 3, axis=-1))
    out, dq, dk, dv = _attention("on", q, k, v, _split_heads(g, h), autocast="bfloat16")
    _close([packed[0]], [_merge_heads(out)], 5e-3, names=("out",))
    _close([packed[1]], [np.concatenate([_merge_heads(x) for x in (dq, dk, dv)], axis=-1)], 2e-2,
           names=("dqkv",))
    assert packed[1].shape == qkv.shape


def test_packed_flash_attention_switch():
    qkv = jt.ones((1, 8, 3 * 2 * 16))
    with precision.autocast("bfloat16"):
        assert flash_attention.packed_supported(qkv, 2)
        assert not flash_attention.packed_supported(qkv, 4)  # head dim 8
        assert not flash_attention.packed_supported(jt.ones((1, 8, 3 * 2 * 16 + 1)), 2)
    assert not flash_attention.packed_supported(qkv, 2)  # float32 outside autocast: the exact path
    with pytest.raises(ValueError, match="packed_flash_attention: needs 16-bit compute"):
        flash_attention.packed_flash_attention(qkv, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("case", PACKED_CASES + [(8, 512, 16, 64), (2, 200, 4, 128)])
def test_packed_flash_attention_cuda(case):
    """The packed CUDA kernels against the float32 exact path on CUDA and against their CPU source."""
    b, t, h, d = case
    rng = np.random.default_rng(t + 1)
    qkv = rng.normal(size=(b, t, 3 * h * d)).astype(np.float32)
    g = rng.normal(size=(b, t, h * d)).astype(np.float32)
    with jittor_on("cuda"):
        exact = _qkv_attention("off", qkv, g, h)
        fused = _qkv_attention("auto", qkv, g, h, autocast="bfloat16")
    _close(fused, exact, 2e-2, names=("out", "dqkv"))
    if b * h * t * t <= 200_000:
        _close(fused, _qkv_attention("on", qkv, g, h, autocast="bfloat16"), 5e-3, names=("out", "dqkv"))


def _check_packed_bf16_input(case, mode):
    """qkv stored in bf16, as the training step's projection leaves it (the kernels' 16-bit loads),
    against float64 attention of the same bf16 values: output and dqkv within bf16's error."""
    b, t, h, d = case
    rng = np.random.default_rng(t + 7)
    qkv = jt.array(rng.normal(size=(b, t, 3 * h * d)).astype(np.float32)).cast("bfloat16").float32().numpy()
    g = rng.normal(size=(b, t, h * d)).astype(np.float32)
    out, dqkv = _qkv_attention(mode, qkv, g, h, autocast="bfloat16", dtype="bfloat16")
    q, k, v = (_split_heads(x, h) for x in np.split(qkv, 3, axis=-1))
    o, dq, dk, dv = _numpy_reference(q, k, v, _split_heads(g, h))
    _close([out, dqkv], [_merge_heads(o), np.concatenate([_merge_heads(x) for x in (dq, dk, dv)], axis=-1)],
           2e-2, names=("out", "dqkv"))


def test_packed_flash_attention_bf16_input_cpu():
    _check_packed_bf16_input(PACKED_CASES[0], "on")  # the CPU source, as CUDA's in "auto"


@pytest.mark.gpu
@pytest.mark.parametrize("case", [(8, 512, 16, 64), (2, 200, 4, 128)])
def test_packed_flash_attention_bf16_input_cuda(case):
    with jittor_on("cuda"):
        _check_packed_bf16_input(case, "auto")


def _sources(sizes, kernels, launch, inputs, outputs, len_input=None, ct="bfloat16", d=64):
    """One pass's CUDA source as jt.code gets it (the kernels in its header), with its Var types."""
    src = flash_attention._sources(kernels, launch, "", ct, d, 0.125, sizes, len_input)
    return "", src["cuda_src"], inputs, outputs, src["cuda_header"]


BF16, HALF = "__nv_bfloat16", "__half"
FA = flash_attention
CUDA_UNITS = {  # the passes as ops.py calls them: packed bf16 (training), separate (decoding)
    "packed forward": (FA._PACKED_SIZES, FA._FWD_CUDA, FA._FWD_LAUNCH, [BF16], [BF16, "float"]),
    "packed backward": (FA._PACKED_SIZES + FA._PACKED_BWD, FA._DELTA_CUDA + FA._BWD_CUDA, FA._BWD_LAUNCH,
                        [BF16, BF16, "float", BF16], ["float", "float"]),
    "forward, float32 inputs, len_kv": (FA._SEPARATE_SIZES, FA._FWD_CUDA, FA._FWD_LAUNCH,
                                        ["float", "float", "float", "int"], ["float", "float"], "in3"),
    "backward, fp16, head dim 128, len_kv": (FA._SEPARATE_SIZES + FA._SEPARATE_BWD, FA._DELTA_CUDA + FA._BWD_CUDA,
                                             FA._BWD_LAUNCH, [HALF] * 4 + ["float", HALF, "int"],
                                             ["float", HALF, HALF, "float"], "in6", "float16", 128),
}


@pytest.mark.parametrize("unit", list(CUDA_UNITS))
def test_cuda_sources_compile_for_hopper(unit, nvcc_compiles):
    """The CUDA sources compile for sm_90 (nvcc only, no GPU needed): their inline PTX (ldmatrix,
    mma.sync) and templates are checked on every machine with nvcc, not only on the GPU one."""
    nvcc_compiles(*_sources(*CUDA_UNITS[unit]))


@pytest.mark.parametrize("archs,takes", [([], True), ([86], True), ([90], True), ([75], False), ([75, 90], False)])
def test_kernels_only_on_gpus_that_have_them(archs, takes, monkeypatch):
    """mma.sync with bf16/fp16 operands needs sm_80: on an older GPU (a T4 is sm_75) ops.py keeps
    the exact path instead of failing to compile the kernels."""
    monkeypatch.setattr(flash_attention, "device_archs", lambda: archs)
    x = jt.ones((1, 2, 8, 16)).cast("bfloat16")
    assert flash_attention.supported(x, x, x) == takes
    assert flash_attention.packed_supported(jt.ones((1, 8, 96)).cast("bfloat16"), 2) == takes
    if not takes:
        with pytest.raises(ValueError, match=r"sm_80 or later \(this GPU: \[75"):
            flash_attention.flash_attention(x, x, x)
