"""Mixed precision (bf16) on a CUDA GPU: both backends against each other and against fp32.

torch runs under `torch.autocast(bfloat16)`; jittor under `jittor_impl.precision.autocast`, which
applies the same rule (matrix products in bf16, everything else in fp32). bf16 keeps 8 bits of
mantissa, so the tolerance is set from the error bf16 itself makes: the two backends at bf16 may
differ from each other by at most 3x torch's own bf16-vs-fp32 error (plus 1e-3), and training
loss curves of 12 steps agree to 2% relative.
"""
import numpy as np
import pytest

from alignment.harness import build_pair, compare, jittor_on, tiny_config, to_numpy
from alignment.test_train_alignment import run

pytestmark = pytest.mark.gpu


def test_bf16_logits_agree_within_bf16_error():
    import torch
    from jittor_impl.precision import autocast
    config = tiny_config(lora_dim=4, n_embd=128, n_layer=2, n_head=4)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (3, 48))
    with jittor_on("cuda") as jt:
        tmodel, jmodel, _ = build_pair(config, seed=1, device="cuda")
        with torch.no_grad():
            fp32 = to_numpy(tmodel(torch.from_numpy(ids).cuda())[0])
            with torch.autocast("cuda", dtype=torch.bfloat16):
                t16 = to_numpy(tmodel(torch.from_numpy(ids).cuda())[0].float())
        with jt.no_grad(), autocast("bfloat16"):
            j16 = to_numpy(jmodel(jt.array(ids))[0].float32())
    own_error = float(np.abs(t16 - fp32).max())
    compare("bf16 logits: jittor vs torch", j16, t16, atol=3 * own_error + 1e-3, rtol=0.0, device="cuda")
    compare("bf16 logits: jittor vs fp32", j16, fp32, atol=3 * own_error + 1e-3, rtol=0.0, device="cuda")


def test_bf16_training_runs_agree(tmp_path, encoded):
    a = run(encoded, tmp_path / "torch", "torch", "cuda", extra=("--precision", "bf16"))
    b = run(encoded, tmp_path / "jittor", "jittor", "cuda", extra=("--precision", "bf16"))
    loss_a = np.array([r["loss"] for r in a[1][0]])
    loss_b = np.array([r["loss"] for r in b[1][0]])
    compare("bf16 training loss curve (16 steps)", loss_b, loss_a, atol=0.0, rtol=2e-2, device="cuda")
