"""Does the GPU wait for Python in Jittor's per-row beam search? (jmma's call C: 4.93 s of wall
per batch against 4.60 s of kernels.)

Per decoding step it times the Python that builds the step's graph (from the step's start to the
loop's `jt.sync`; it includes the `sync` of `BestCandidates.offer`, which on the CPU also
computes the selection) and the `jt.sync` call itself (Jittor's executor: it schedules and
launches the step's kernels). Pass `async`: the loop as committed (`jt.sync` without device sync). Pass
`device`: the same loop with `jt.sync_all(True)` after each step, so the GPU is idle while Python
builds the next graph. If `async` takes about as long a step as `device`, something in the step
already waits for the GPU and the build time is the gap; if it takes about the kernels' time,
the build overlaps them. On CUDA a last pass runs one search under torch's profiler, whose CUPTI
tracing sees the CUDA runtime and driver calls of every library in the process, Jittor's
included: a synchronous call (a device synchronize, a blocking copy) per step says where the
host waits. Usage:
  decode_host_probe.py TEST_JSONL BATCHES    gpt2.md, fp32, beam 10, batches of 105 MRs, CUDA
  decode_host_probe.py cpu                   a smoke run: a 24-layer, 32-wide model on the CPU
Prints one `host` line per pass (ms per step of build, sync and wall) and, on CUDA, one
`host call` line per traced runtime or driver call (count per step, ms per step).
"""
import sys
import time

import numpy as np

from backends.benchmark_steps import BEAM_SETTINGS as settings  # the beam rows' flags
from shared.model.config import GPT2Config

from jittor_impl import GPT2LMModel
from jittor_impl import beam as jittor_beam
from jittor_impl.runtime import jt, use_device

if sys.argv[1:] == ["cpu"]:
    config = GPT2Config(n_embd=32, n_layer=24, n_head=2, n_positions=256, n_ctx=256,
                        lora_attn_dim=4)
    rng = np.random.default_rng(0)
    batches = [{"query": rng.integers(0, 50000, (2, 20)), "query_len": np.array([20, 15])}] * 2
else:
    from shared.text.batching import FTDataset
    use_device("cuda")
    config = GPT2Config.from_model_card("gpt2.md")
    dataset = FTDataset.from_file(sys.argv[1], 105, 512, 64)
    items = dataset.first_of_each_context()
    batches = list(dataset.query_batches(105, items=items))[:int(sys.argv[2])]
jt.set_global_seed(0)
model = GPT2LMModel(config)
model.eval()

committed_sync = jt.sync
clock = {"build": 0.0, "sync": 0.0, "steps": 0, "mark": 0.0}


def timed_sync(device_sync):
    """The loop's per-step `jt.sync`, timed: the time since the last one is the graph's build."""
    def sync(*args, **kwargs):
        start = time.perf_counter()
        clock["build"] += start - clock["mark"]
        out = committed_sync(*args, **kwargs)
        if device_sync:
            jt.sync_all(True)
        clock["mark"] = time.perf_counter()
        clock["sync"] += clock["mark"] - start
        clock["steps"] += 1
        return out
    return sync


def search(batch):
    clock["mark"] = time.perf_counter()  # the first forward over the queries counts as build
    return jittor_beam.beam_search(model, jt.array(batch["query"]), jt.array(batch["query_len"]),
                                   settings).numpy()


outputs = {}
for mode in ("async", "device", "async"):  # async twice: the first pass also compiles
    jt.sync = timed_sync(mode == "device")
    search(batches[0])
    jt.sync_all(True)
    clock.update(build=0.0, sync=0.0, steps=0)
    start = time.perf_counter()
    outs = [search(b) for b in batches]
    jt.sync_all(True)
    wall = time.perf_counter() - start
    jt.sync = committed_sync
    n = clock["steps"]
    outputs.setdefault(mode, np.concatenate(outs))
    print(f"host {mode}: {n} steps, per step: build {clock['build'] * 1e3 / n:.2f} ms, "
          f"jt.sync {clock['sync'] * 1e3 / n:.2f} ms, wall {wall * 1e3 / n:.2f} ms "
          f"({wall / len(batches):.3f} s per batch)", flush=True)
print("host outputs equal across passes:", bool((outputs["async"] == outputs["device"]).all()))


def traced_calls(batch, top=15):
    """One search under torch's profiler (CUDA activity: CUPTI's runtime and driver records)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.init()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        search(batch)
        jt.sync_all(True)
    steps = settings.eval_len
    calls = [(event.key, event.count / steps, event.cpu_time_total / 1e3 / steps)  # host side:
             for event in prof.key_averages()  # not kernels (cub::..., cutlass... start with cu too)
             if event.device_type == DeviceType.CPU and event.key.startswith("cu")]
    for name, count, ms in sorted(calls, key=lambda c: -c[2])[:top]:
        print(f"host call {name}: {count:.1f} per step, {ms:.3f} ms per step", flush=True)
    if not calls:
        print("host call: none traced (CUPTI saw no runtime or driver calls of Jittor's)")


if jt.flags.use_cuda:
    try:
        traced_calls(batches[0])
    except Exception as error:  # a probe: say why the trace is missing, keep the timings above
        print(f"host call: the trace failed: {type(error).__name__}: {error}")
