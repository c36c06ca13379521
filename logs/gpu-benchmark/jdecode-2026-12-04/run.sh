#!/usr/bin/env bash
# Device calls of 2026-12-04 (fourth session): Jittor's float32 decoding step (per-row beam search).
# Run from the repository root on the GPU machine with .device-wheels (jittor 1.3.11, numpy
# 1.26.4, astunparse) and .device-data (gpt2/ vocabulary, e2e-offline/, e2e-jsonl/ from
# prepare_e2e.py) carried:
#   BUDGET=560 TAG=a bash logs/gpu-benchmark/jdecode-2026-12-04/run.sh STAGE...
# Stages (each under its own time limit so the call ends inside the tool's 10 minutes):
#   probe   decode_probe.py: the float32 decoding kernels against the exact path at the beam's
#           shapes; an op whose CHECK fails is left out of the later stages (JLA_FUSED_OPS);
#           then torch_decode_probe.py: the torch twin's per-row attention and other forms of it
#   host    decode_host_probe.py: Jittor's per-step graph build and sync, with and without a
#           device sync per step, and one search's CUDA calls traced (does the GPU wait for Python?)
#   table   table_ab.py: per-row beam search with the decoding kernels, the cache reordered after
#           each selection against read in place through a row table, one process, same batches
#   beamab  beam_ab.py (call A only): per-row beam search over $AB_BATCHES batches with candidate
#           forms switched on one after another (Jittor), then the torch twin over the same batches
#   tests   the GPU tests named in tests.txt here (a grep -E $TESTS narrows them), $NPROC workers
#   beam    beam search rows, 630 test MRs, for $CACHES (default per_row), jittor and torch, profiled
#   train   gpt2.md training rows of jittor, torch+compile and torch, profiled
#   compile gpt2.md training rows of torch+compile (reduce-overhead) and torch+autotune
#           (max-autotune), profiled: the torch --compile target (WARMUP=0 skips Jittor's warm-up);
#           then, with time left, torch+autotune with inductor's coordinate-descent tuning too
# Every row of one call lands in one record ($OUT/w/$TAG.md/.json): rows of one machine compare.
set -u
T0=$SECONDS
BUDGET=${BUDGET:-560}
TAG=${TAG:-a}
O=${OUT:-/tmp/out}; W=$O/w; mkdir -p "$W"
D=$PWD/.device-data
HERE=logs/gpu-benchmark/jdecode-2026-12-04
left() { echo $((BUDGET - (SECONDS - T0))); }
note() { echo "[$((SECONDS - T0))s] $*" | tee -a "$W/progress.log"; }
lim() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; [ "$want" -lt 1 ] && want=1; echo $want; }
TEST=$D/e2e-jsonl/test.jsonl
test_split() {  # the encoded test split: carried, or made once with prepare_e2e.py where it is not
  [ -f "$TEST" ] && return
  python3 scripts/prepare_e2e.py --data_dir "$D/e2e-offline" --out_dir /tmp/e2e-jsonl --vocab "$D/gpt2" > "$W/prepare.log" 2>&1
  note "prepare_e2e rc=$?"; TEST=/tmp/e2e-jsonl/test.jsonl
}
clean() { grep -v "Compiling Operators\|SyntaxWarning\|^\s*$" "$1" > "$1.tmp"; mv "$1.tmp" "$1"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export GPT2_VOCAB_DIR=$D/gpt2 E2E_DATA_DIR=$D/e2e-offline
# every fused op, the float32 decoding kernels awaiting their GPU tests included (the probe stage
# leaves out any whose check fails)
export JLA_FUSED_OPS=${JLA_FUSED_OPS:-gelu,layer_norm,softmax,attention,cross_entropy,optimizer,gather,decode_attention,decode_gelu}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$W/gpu.txt" 2>&1
note "start: $*"
if [ "${WARMUP:-1}" = 1 ]; then
  timeout $(lim 220) python3 scripts/jittor_warmup.py > "$W/warmup.log" 2>&1
  note "warmup rc=$?"
fi
BENCH_NP=(python3 scripts/benchmark.py --steps 10 --warmup 5 --out "$W/$TAG.md")  # no profile
BENCH=("${BENCH_NP[@]}")
[ "${PROFILE:-1}" = 1 ] && BENCH+=(--profile)  # PROFILE=0: rows only, when device time is short
for stage in "$@"; do
  case $stage in
    probe)
      timeout $(lim ${PROBE_S:-120}) python3 $HERE/decode_probe.py > "$W/probe-$TAG.log" 2>&1
      note "probe rc=$?"; clean "$W/probe-$TAG.log"; grep "ms per call\|bits equal\|^CHECK" "$W/probe-$TAG.log"
      # an op whose check did not pass (or did not run) is left out of the later stages
      keep=gelu,softmax,attention,cross_entropy,optimizer,gather
      for op in decode_attention layer_norm decode_gelu; do
        if grep -q "^CHECK $op ok" "$W/probe-$TAG.log"; then keep=$keep,$op; else note "left out: $op"; fi
      done
      export JLA_FUSED_OPS=$keep; note "JLA_FUSED_OPS=$keep"
      # the torch twin's per-row attention at the same shapes: committed path and other forms
      timeout $(lim ${TPROBE_S:-90}) python3 $HERE/torch_decode_probe.py > "$W/torch-probe-$TAG.log" 2>&1
      note "torch probe rc=$?"; grep "^torch decode" "$W/torch-probe-$TAG.log" ;;
    host)
      test_split
      # does the GPU wait for Python between Jittor's decoding steps? (wall vs kernels; after
      # the beam stage, whose compiled kernels it reuses: in call B it ran out of time compiling)
      timeout $(lim ${HPROBE_S:-150}) python3 $HERE/decode_host_probe.py "$TEST" ${HPROBE_BATCHES:-1} > "$W/host-probe-$TAG.log" 2>&1
      note "host probe rc=$?"; clean "$W/host-probe-$TAG.log"; grep "^host" "$W/host-probe-$TAG.log" ;;
    beamab)
      test_split
      timeout $(lim ${AB_S:-300}) python3 $HERE/beam_ab.py "$TEST" ${AB_BATCHES:-2} > "$W/beamab-$TAG.log" 2>&1
      note "beamab jittor rc=$?"
      timeout $(lim 90) python3 $HERE/beam_ab.py "$TEST" ${AB_BATCHES:-2} torch >> "$W/beamab-$TAG.log" 2>&1
      note "beamab torch rc=$?"; clean "$W/beamab-$TAG.log"; grep "per batch" "$W/beamab-$TAG.log" ;;
    table)
      test_split
      # the per-row search with the decoding kernels, cache reordered vs read through a row table
      timeout $(lim ${TABLE_S:-300}) python3 $HERE/table_ab.py "$TEST" ${TABLE_BATCHES:-2} > "$W/table-$TAG.log" 2>&1
      note "table rc=$?"; clean "$W/table-$TAG.log"; grep "per batch\|outputs equal\|^profile" "$W/table-$TAG.log" ;;
    tests)
      mapfile -t SEL < <(grep -E "${TESTS:-.}" $HERE/tests.txt)
      note "tests: ${#SEL[@]} selected"
      # pytest writes to a file, not a pipe: a pipe's reader killed by the limit lost logs before.
      # pytest-timeout fails a test that runs for the stage's limit less 20 s and prints its stack:
      # where a test that does not finish spends its time (call C's whole-beam test did not say)
      tl=$(lim ${TESTS_S:-240})
      timeout -k 10 $tl python3 -m pytest "${SEL[@]}" -m gpu -v -rfE -p no:cacheprovider \
        --timeout $(( tl > 60 ? tl - 20 : 40 )) --timeout_method thread --durations 0 \
        -n ${NPROC:-12} --dist load > "$W/gpu-tests-$TAG.log" 2>&1
      rc=$?; clean "$W/gpu-tests-$TAG.log"
      note "gpu tests rc=$rc: $(grep -c ' PASSED ' "$W/gpu-tests-$TAG.log") passed, $(grep -c ' FAILED \| ERROR ' "$W/gpu-tests-$TAG.log") failed; $(tail -1 "$W/gpu-tests-$TAG.log")" ;;
    beam)
      test_split
      # Jittor profiled (where its time goes now), torch not (its code did not change)
      timeout $(lim ${BEAM_S:-300}) "${BENCH[@]}" --backends jittor --cards "" --extra_cards "" \
        --test_data "$TEST" --beam_caches ${CACHES:-per_row} --resume > "$W/beam-$TAG.log" 2>&1
      note "beam jittor rc=$?"
      timeout $(lim ${BEAM_S:-300}) "${BENCH_NP[@]}" --backends torch --cards "" --extra_cards "" \
        --test_data "$TEST" --beam_caches ${CACHES:-per_row} --resume >> "$W/beam-$TAG.log" 2>&1
      note "beam torch rc=$?"; clean "$W/beam-$TAG.log"; grep "^beam\|^| gpt2.md | \(torch\|jittor\)" "$W/$TAG.md" ;;
    train)
      timeout $(lim ${TRAIN_S:-$(( $(left) - 5 ))}) "${BENCH[@]}" --backends jittor,torch+compile,torch \
        --cards gpt2.md --extra_cards "" --resume > "$W/train-$TAG.log" 2>&1
      note "train rc=$?"; clean "$W/train-$TAG.log"; grep "^| gpt2" "$W/$TAG.md" ;;
    compile)
      timeout $(lim ${COMPILE_S:-$(( $(left) - 5 ))}) "${BENCH[@]}" --backends torch+compile,torch+autotune \
        --cards gpt2.md --extra_cards "" --resume > "$W/compile-$TAG.log" 2>&1
      note "compile rc=$?"; clean "$W/compile-$TAG.log"; grep "^| gpt2" "$W/$TAG.md"
      # inductor's coordinate-descent tuning of its own kernels on top, in a record of its own
      if [ "$(left)" -gt 150 ]; then
        TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 timeout $(lim $(( $(left) - 5 ))) "${BENCH[@]/$TAG.md/$TAG-cdt.md}" \
          --backends torch+autotune --cards gpt2.md --extra_cards "" --resume > "$W/compile-cdt-$TAG.log" 2>&1
        note "compile cdt rc=$?"; clean "$W/compile-cdt-$TAG.log"; grep "^| gpt2" "$W/$TAG-cdt.md"
      fi ;;
    *) note "unknown stage $stage" ;;
  esac
done
note end
