"""scripts/benchmark.py end to end on the CPU (tiny shapes, both backends, a skipped peer), and its
report: the committed H100 record renders to the committed report, kernels sum by kind."""
import json
import os
import subprocess
import sys

import pytest

from backends import benchmark_peers
from backends.benchmark_steps import jittor_kernel_ops
from shared.pipeline.benchmark_plan import failure_summary, render, summarize_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_HEADER = ("| model | variant | tokens/s | step (ms) | model TFLOP/s | MFU | peak device GiB "
                   "| peak tensors GiB | vs torch | vs best peer |")
BEAM_HEADER = "| model | backend | MRs | seconds | MRs/s | jittor/torch speed |"
# The settings of the run that wrote logs/benchmark.json (its report's header says them; records
# written since hold their own "settings").
COMMITTED_RUN_SETTINGS = dict(seq_len=512, batch_size=8, steps=10, warmup=5, test_data="test.jsonl",
                              beam_batch_size=105, n_embd=None, n_layer=None, n_head=None)


def run_benchmark(*args):
    return subprocess.run([sys.executable, "scripts/benchmark.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def cpu_flags(test_data, out):
    return ["--device", "cpu", "--precision", "fp32", "--backends", "torch,jittor,hf+peft",
            "--cards", "gpt2.sm", "--extra_cards", "", "--n_embd", "32", "--n_layer", "1",
            "--n_head", "2", "--seq_len", "16", "--batch_size", "2", "--steps", "2", "--warmup",
            "1", "--profile", "--test_data", str(test_data), "--beam_cards", "gpt2.sm",
            "--beam_batch_size", "2", "--out", str(out)]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One tiny CPU run of everything (six measuring processes): read by the report test and
    resumed by the resume test."""
    tmp_path = tmp_path_factory.mktemp("benchmark")
    test_data = tmp_path / "test.jsonl"  # two MRs, the second repeated: two queries
    test_data.write_text("".join(json.dumps({"context": c, "completion": [13, 50256]}) + "\n"
                                 for c in ([464, 1332, 318], [40, 588], [40, 588])))
    out = tmp_path / "bench" / "benchmark.md"
    return test_data, out, run_benchmark(*cpu_flags(test_data, out))


def test_cpu_run_writes_the_report_of_both_backends(cpu_run):
    _, out, proc = cpu_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report, record = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert report == render(record)
    assert TRAINING_HEADER in report and BEAM_HEADER in report
    assert "Not measured: gpt2.sm hf+peft: the peers run on CUDA only" in report
    assert "Variants that failed" not in report
    assert "### gpt2.sm jittor: step" in report and "### gpt2.sm beam search, jittor" in report
    assert "| kernel | operations | shape | ms | calls |" in report  # Jittor's kernels, named
    torch_row = next(line for line in report.splitlines() if line.startswith("| gpt2.sm | torch |"))
    assert torch_row.endswith("| 1.00 |  |")  # vs torch, and no peer to compare with
    assert list(record["training"]["gpt2.sm"]) == ["torch", "jittor"]
    beam = record["beam"]["gpt2.sm"]
    assert list(beam) == ["torch", "torch+shared_prefix", "jittor", "jittor+shared_prefix"]
    assert beam["jittor"]["queries"] == 2 and beam["jittor+shared_prefix"]["cache"] == "shared_prefix"
    for backend in ("torch", "jittor"):  # each cache timed in its own process, outputs compared
        assert beam[backend + "+shared_prefix"]["output_digests"] == beam[backend]["output_digests"]
        assert f"- gpt2.sm {backend}+shared_prefix: " in report
    assert "the same output for 2 of 2 MRs" in report
    assert record["settings"]["n_embd"] == 32 and record["environment"]["device"] == "cpu"
    for result in record["training"]["gpt2.sm"].values():
        assert result["tokens_per_s"] > 0 and result["peak_device_mib"] is None


def test_a_beam_only_record_renders_its_profiles_and_no_empty_training_table(cpu_run):
    """A run of beam rows alone (--cards "" with --test_data) keeps its kernel profiles in the
    report, and shows no training table without training rows."""
    _, out, proc = cpu_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    record["training"] = {}
    report = render(record)
    assert TRAINING_HEADER not in report and BEAM_HEADER in report
    assert "### gpt2.sm beam search, jittor" in report and "## Where the time goes" in report


def test_bad_flags_are_one_line_errors_before_any_measurement(tmp_path):
    proc = run_benchmark("--device", "cpu", "--backends", "torch,torch+autotune,tensorflow",
                         "--extra_cards", "gpt2.xl", "--out", str(tmp_path / "b.md"))
    assert proc.returncode == 2
    assert "--backends: unknown ['tensorflow']" in proc.stderr
    assert "--extra_cards: unknown ['gpt2.xl']" in proc.stderr
    assert not os.listdir(tmp_path)


def test_the_committed_record_renders_to_the_committed_report():
    with open(os.path.join(ROOT, "logs", "benchmark.json"), encoding="utf-8") as f:
        record = json.load(f)
    record.setdefault("settings", COMMITTED_RUN_SETTINGS)
    with open(os.path.join(ROOT, "logs", "benchmark.md"), encoding="utf-8") as f:
        committed = f.read()
    # what follows the rendered report was written by hand after the run
    assert committed.startswith(render(record))


def test_kernels_sum_by_kind_and_rank_by_time():
    kernels = {"nvjet_sm90_gemm": (6.0, 4), "triton_poi_fused_add": (2.0, 2),
               "bfloat16_copy_kernel": (1.0, 6), "layer_norm_kernel": (1.0, 2)}
    prof = summarize_kernels(kernels, count=2, top=2)
    assert prof["device_ms_per_step"] == 5.0 and prof["launches_per_step"] == 7.0
    assert prof["kinds"] == {"matrix products": [3.0, 2.0], "fused (inductor)": [1.0, 1.0],
                             "copies and casts": [0.5, 3.0],
                             "other element-wise and reductions": [0.5, 1.0]}
    assert [row["kernel"] for row in prof["top"]] == ["nvjet_sm90_gemm", "triton_poi_fused_add"]
    assert prof["top"][0]["share"] == 0.6


def test_peers_skip_without_cuda_or_their_libraries(monkeypatch):
    assert benchmark_peers.peer_problem("hf+peft", "cpu") == "the peers run on CUDA only"
    monkeypatch.setattr(benchmark_peers.importlib.util, "find_spec", lambda name: None)
    assert benchmark_peers.peer_problem("hf+peft", "cuda") == "transformers and peft not installed"
    assert benchmark_peers.peer_problem("reference", "cuda") is None


def test_jittor_kernels_are_named_by_their_operations():
    # a jit key as Jittor's profiler writes it (shortened): an int32 index array, a cast, a product
    key = ("«opkey0:array«T:int32«o:2«opkey1:broadcast_to«Tx:int32«DIM=2«BCAST=3"
           "«opkey2:unary«Tx:float32«Ty:bfloat16«OP:cast«opkey3:binary«Tx:bfloat16«Ty:int32"
           "«Tz:bfloat16«OP:multiply«opkey4:reduce«Tx:float32«Ty:float32«Tz:float32«OP:add«DIM=2"
           "«JIT:1«JIT_cpu:1«graph:000020,«var_info::111112«index_t:int32")
    assert jittor_kernel_ops(key) == "cast float32>bfloat16, multiply, reduce add"


def test_failure_summary_keeps_what_went_wrong():
    """A child's output as Jittor's JIT failure leaves it (coloured, ending in an nvcc command
    line): the report keeps the exception and the reason, not the command."""
    out = ("Traceback (most recent call last):\n  File \"train.py\", line 136, in update\n"
           "RuntimeError: Wrong inputs arguments, Please refer to examples(help(jt.sync)).\n"
           "Reason: \x1b[38;5;1m[f 1204 expr.cc:170] Check failed: is_unary_op.count(op)  Something wrong... "
           "Could you please report this issue?\x1b[m\n"
           '"/root/.cache/bin/nvcc" "/root/.cache/jit/code__IN_SIZE__69_op.cc" -std=c++14 ' + "-I x " * 80)
    summary = failure_summary(out)
    assert summary == ("RuntimeError: Wrong inputs arguments, Please refer to examples(help(jt.sync)). / "
                       "Reason: [f 1204 expr.cc:170] Check failed: is_unary_op.count(op)  Something wrong... "
                       "Could you please report this issue?")
    kept = f"RuntimeError: exit 1: {summary}"  # as the record keeps it: rendered unchanged
    assert failure_summary(kept) == kept
    assert failure_summary("\x1b[1mkilled\x1b[m\n") == "killed"


def test_resume_keeps_what_was_measured_and_measures_the_rest(cpu_run, tmp_path):
    """The CPU run's record less its jittor training row (as a run stopped after torch's, or
    whose jittor measurement failed, leaves it): --resume measures that row alone."""
    test_data, full, _ = cpu_run
    out = tmp_path / "benchmark.md"
    first = json.loads(full.with_suffix(".json").read_text())
    assert first["training"]["gpt2.sm"].pop("jittor")
    out.with_suffix(".json").write_text(json.dumps(first))
    flags = cpu_flags(test_data, out)
    proc = run_benchmark(*flags, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    progress = sorted(line.split()[:3] for line in proc.stdout.splitlines()
                      if line.startswith(("train ", "beam ")))  # a line per measurement or skip
    assert progress == [["train", "gpt2.sm", "hf+peft"], ["train", "gpt2.sm", "jittor"]], progress
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["training"]["gpt2.sm"]["torch"] == first["training"]["gpt2.sm"]["torch"]
    assert record["beam"] == first["beam"]
    assert record["training"]["gpt2.sm"]["jittor"]["tokens_per_s"] > 0
    assert record["sessions"] == 2 and "Measured in 2 runs" in out.read_text()
    other = [a if a != "16" else "32" for a in flags]  # another seq_len: refused, nothing written
    proc = run_benchmark(*other, "--resume")
    assert proc.returncode == 2 and "seq_len=16" in proc.stderr and "32" in proc.stderr
    assert json.loads(out.with_suffix(".json").read_text()) == record
