"""Per-row beam search (gpt2.md, fp32, beam 10, eval_len 64, batches of 105 test MRs, random
weights as scripts/benchmark.py) with candidate forms of Jittor's decoding ops switched on one
after another in one process, each timed over the same batches after a warm-up batch:
  base     the code before this session's decoding forms (switched off here)
  gelu     + the exact-form GELU kernel (fused_kernels.gelu_wanted)
  ln       + the one-kernel LayerNorm forward in float32 decoding (fused_kernels.layer_norm_wanted)
  scores   + the scores as k q^T (precision.batched_matmul_transpose, one query row)
  pv       + p v as (v^T p^T)^T (patched in here)
Usage: beam_ab.py TEST_JSONL BATCHES [torch]. With `torch`, the torch twin's per-row search over
the same batches instead. Prints seconds per batch and, per variant, how many MRs' outputs equal
the base's."""
import sys
import time

import numpy as np

from shared.decode.beam_spec import BeamSettings
from shared.model.config import GPT2Config
from shared.text.batching import FTDataset

test, count = sys.argv[1], int(sys.argv[2])
settings = BeamSettings(beam=10, eval_len=64, min_length=0, length_penalty=0.8,
                        no_repeat_ngram_size=4, repetition_penalty=1.0, eos_token_ids=(50256, 628))
config = GPT2Config.from_model_card("gpt2.md")
dataset = FTDataset.from_file(test, 105, 512, 64)
batches = list(dataset.query_batches(105, items=dataset.first_of_each_context()))[:count]


def timed(run, sync):
    run(batches[0])
    sync()
    start = time.perf_counter()
    outs = [run(b) for b in batches]
    sync()
    return (time.perf_counter() - start) / len(batches), np.concatenate(outs)


if sys.argv[3:] == ["torch"]:
    import torch
    from torch_impl import GPT2LMModel
    from torch_impl.beam import beam_search
    torch.manual_seed(0)
    model = GPT2LMModel(config).cuda().eval()
    run = lambda b: beam_search(model, torch.from_numpy(b["query"]).cuda(),
                                torch.from_numpy(b["query_len"]).cuda(), settings).cpu().numpy()
    sec, _ = timed(run, torch.cuda.synchronize)
    print(f"torch per_row: {sec:.3f} s per batch of 105 MRs", flush=True)
    sys.exit(0)

from jittor_impl import GPT2LMModel, fused_kernels, ops, precision
from jittor_impl.beam import beam_search
from jittor_impl.runtime import jt, use_device

use_device("cuda")
jt.set_global_seed(0)
model = GPT2LMModel(config)
model.eval()
run = lambda b: beam_search(model, jt.array(b["query"]), jt.array(b["query_len"]), settings).numpy()
cublas = jt.compile_extern.cublas_ops
new_forms = {"gelu": (fused_kernels, "gelu_wanted"), "ln": (fused_kernels, "layer_norm_wanted"),
             "scores": (ops, "batched_matmul_transpose")}
plain_mm = ops.matmul


def old_bmt(a, b):
    a, b = precision._cast(a, b)
    return precision._float32(cublas.cublas_batched_matmul(a, b, False, True))


def mm(a, b):
    if a.ndim == 4 and b.ndim == 4 and a.shape[-2] == 1 and str(a.dtype) == "float32":
        out = cublas.cublas_batched_matmul(b, a, True, True)
        return out.reshape(list(out.shape[:-2]) + [1, out.shape[-2]])
    return plain_mm(a, b)


kept = {name: getattr(module, attr) for name, (module, attr) in new_forms.items()}
fused_kernels.gelu_wanted = lambda x: fused_kernels.wanted(x, "gelu")
fused_kernels.layer_norm_wanted = lambda x: fused_kernels.wanted(x, "layer_norm")
ops.batched_matmul_transpose = old_bmt
base = None
for name in ("base", "gelu", "ln", "scores", "pv"):
    if name in new_forms:
        setattr(*new_forms[name], kept[name])
    if name == "pv":
        ops.matmul = mm
    sec, out = timed(run, lambda: jt.sync_all(True))
    base = out if base is None else base
    same = sum(np.array_equal(a, b) for a, b in zip(out, base))
    print(f"jittor per_row {name}: {sec:.3f} s per batch of 105 MRs; outputs equal to base: {same}/{len(out)}", flush=True)
