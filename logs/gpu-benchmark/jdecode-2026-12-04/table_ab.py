"""Jittor's per-row beam search with the float32 decoding kernels, its cache reordered after every
selection against the same search reading the cache through a row table (jittor_impl/row_table.py),
in one process over the same batches (gpt2.md, fp32, the beam rows' flags, batches of 105 test
MRs, random weights as scripts/benchmark.py), each timed after a warm-up batch, then each again
(the order's effect). Prints seconds per batch and how many MRs' outputs are equal; then, unless
PROFILE=0, one batch of each under Jittor's profiler, its costliest kernels.
Usage: table_ab.py TEST_JSONL BATCHES | table_ab.py cpu (a smoke run: a tiny model, 2 batches)."""
import os
import sys
import time

import numpy as np

from backends.benchmark_steps import BEAM_SETTINGS as settings  # the beam rows' flags
from backends.benchmark_steps import profile_steps
from shared.model.config import GPT2Config

from jittor_impl import GPT2LMModel, fused_kernels, row_table
from jittor_impl.beam import beam_search
from jittor_impl.runtime import jt, use_device

fused_kernels._ops.add("decode_attention")  # the kernel the table needs, awaiting its GPU test
if sys.argv[1:] == ["cpu"]:
    fused_kernels.set_fused_kernels("on")
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, n_ctx=256, lora_attn_dim=4)
    rng = np.random.default_rng(0)
    batches = [{"query": rng.integers(0, 50000, (3, 20)), "query_len": np.array([20, 15, 9])}] * 2
else:
    from shared.text.batching import FTDataset
    use_device("cuda")
    config = GPT2Config.from_model_card("gpt2.md")
    dataset = FTDataset.from_file(sys.argv[1], 105, 512, 64)
    batches = list(dataset.query_batches(105, items=dataset.first_of_each_context()))[:int(sys.argv[2])]
jt.set_global_seed(0)
model = GPT2LMModel(config)
model.eval()
table_wanted = row_table.wanted
used = []


def run(batch, table):
    row_table.wanted = lambda *a: used.append(table and table_wanted(*a)) or used[-1]
    return beam_search(model, jt.array(batch["query"]), jt.array(batch["query_len"]), settings).numpy()


def timed(table):
    run(batches[0], table)
    jt.sync_all(True)
    start = time.perf_counter()
    out = np.concatenate([run(b, table) for b in batches])
    jt.sync_all(True)
    return (time.perf_counter() - start) / len(batches), out


outs = {}
for table in (False, True, False, True):
    sec, outs[table] = timed(table)
    name = "row table" if table else "reordered"
    assert used[-1] == table, "the row table was not taken: is the decoding attention wanted here?"
    print(f"jittor per_row {name}: {sec:.3f} s per batch of {len(batches[0]['query'])} MRs", flush=True)
same = sum(np.array_equal(a, b) for a, b in zip(outs[True], outs[False]))
print(f"outputs equal, row table vs reordered: {same}/{len(outs[True])}", flush=True)

if os.environ.get("PROFILE", "1") == "1":
    for table in (False, True):  # one batch each under Jittor's profiler (the benchmark's reader)
        profile = profile_steps("jittor", lambda _: run(batches[0], table), 0, 1, top=8)
        name = "row table" if table else "reordered"
        print(f"profile {name}: {profile['device_ms_per_step']:.0f} ms of kernels in one batch, "
              f"{profile['launches_per_step']:.0f} launches", flush=True)
        for row in profile["distinct"]:
            print(f"  {row['ms_per_step']:8.1f} ms {row['calls_per_step']:6.0f} calls  {row['kernel']} "
                  f"{row['shape']}  ({row['ops'][:60]})", flush=True)
