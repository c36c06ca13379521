#!/usr/bin/env bash
# Device calls of 2026-12-04 (third session): Jittor's flash attention as register-fragment
# mma.sync kernels, against the wmma kernels before them and in the training step. Run from the repository root on
# the GPU machine with .device-wheels (jittor 1.3.11, numpy 1.26.4, astunparse) and .device-data
# (gpt2/ vocabulary, e2e-offline/, e2e-jsonl/test.jsonl from prepare_e2e.py) carried:
#   BUDGET=560 TAG=a bash logs/gpu-benchmark/jmma-2026-12-04/run.sh STAGE...
# Stages (each under its own time limit so the call ends inside the tool's 10 minutes):
#   probe  decode_ops_probe.py: Jittor's float32 LayerNorm and GELU at the beam search's decode shapes
#   ab     attention_ab.py: the new attention kernels against the wmma ones (accuracy, speed); the
#          later stages run only when its accuracy check passed
#   tests  the GPU tests named in tests.txt here (a grep -E $TESTS narrows them), $NPROC workers
#   beam   beam search rows, 630 test MRs, for $CACHES (default per_row), jittor and torch, profiled
#   train  gpt2.md training rows of jittor, torch+compile and torch, profiled
# Every row of one call lands in one record ($OUT/w/$TAG.md/.json): rows of one machine compare.
set -u
T0=$SECONDS
BUDGET=${BUDGET:-560}
TAG=${TAG:-a}
O=${OUT:-/tmp/out}; W=$O/w; mkdir -p "$W"
D=$PWD/.device-data
HERE=logs/gpu-benchmark/jmma-2026-12-04
left() { echo $((BUDGET - (SECONDS - T0))); }
note() { echo "[$((SECONDS - T0))s] $*" | tee -a "$W/progress.log"; }
lim() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; [ "$want" -lt 1 ] && want=1; echo $want; }
clean() { grep -v "Compiling Operators\|SyntaxWarning\|^\s*$" "$1" > "$1.tmp"; mv "$1.tmp" "$1"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export GPT2_VOCAB_DIR=$D/gpt2 E2E_DATA_DIR=$D/e2e-offline
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$W/gpu.txt" 2>&1
note "start: $*"
timeout $(lim 220) python3 scripts/jittor_warmup.py > "$W/warmup.log" 2>&1
note "warmup rc=$?"
BENCH=(python3 scripts/benchmark.py --steps 10 --warmup 5 --profile --out "$W/$TAG.md")
for stage in "$@"; do
  case $stage in
    probe)
      timeout $(lim ${PROBE_S:-90}) python3 $HERE/decode_ops_probe.py > "$W/probe-$TAG.log" 2>&1
      note "probe rc=$?"; clean "$W/probe-$TAG.log"; grep "ms per call\|vs 3-D" "$W/probe-$TAG.log" ;;
    ab)
      timeout $(lim ${AB_S:-200}) python3 $HERE/attention_ab.py > "$W/ab-$TAG.log" 2>&1
      rc=$?; clean "$W/ab-$TAG.log"; note "ab rc=$rc"; grep "^accuracy\|^speed" "$W/ab-$TAG.log"
      [ $rc = 0 ] || { note "stopping: the attention check failed"; break; } ;;
    tests)
      mapfile -t SEL < <(grep -E "${TESTS:-.}" $HERE/tests.txt)
      note "tests: ${#SEL[@]} selected"
      # pytest writes to a file, not a pipe: a pipe's reader killed by the limit lost logs before
      timeout -k 10 $(lim ${TESTS_S:-240}) python3 -m pytest "${SEL[@]}" -m gpu -v -rfE -p no:cacheprovider \
        -n ${NPROC:-12} --dist load > "$W/gpu-tests-$TAG.log" 2>&1
      rc=$?; clean "$W/gpu-tests-$TAG.log"
      note "gpu tests rc=$rc: $(grep -c ' PASSED ' "$W/gpu-tests-$TAG.log") passed, $(grep -c ' FAILED \| ERROR ' "$W/gpu-tests-$TAG.log") failed; $(tail -1 "$W/gpu-tests-$TAG.log")" ;;
    beam)
      TEST=$D/e2e-jsonl/test.jsonl
      if [ ! -f "$TEST" ]; then  # prepare_e2e.py's encoded splits, made here when not carried
        python3 scripts/prepare_e2e.py --data_dir "$D/e2e-offline" --out_dir /tmp/e2e-jsonl --vocab "$D/gpt2" > "$W/prepare.log" 2>&1
        TEST=/tmp/e2e-jsonl/test.jsonl; note "prepare_e2e rc=$?"
      fi
      timeout $(lim ${BEAM_S:-300}) "${BENCH[@]}" --backends jittor,torch --cards "" --extra_cards "" \
        --test_data "$TEST" --beam_caches ${CACHES:-per_row} --resume > "$W/beam-$TAG.log" 2>&1
      note "beam rc=$?"; clean "$W/beam-$TAG.log"; grep "^beam" "$W/beam-$TAG.log" ;;
    train)
      timeout $(lim ${TRAIN_S:-$(( $(left) - 5 ))}) "${BENCH[@]}" --backends jittor,torch+compile,torch \
        --cards gpt2.md --extra_cards "" --resume > "$W/train-$TAG.log" 2>&1
      note "train rc=$?"; clean "$W/train-$TAG.log"; grep "^| gpt2" "$W/$TAG.md" ;;
    *) note "unknown stage $stage" ;;
  esac
done
note end
