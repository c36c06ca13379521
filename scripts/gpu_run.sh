#!/usr/bin/env bash
# The GPU session behind the committed GPU logs (logs/gpu-*), stage by stage:
#   warmup     Jittor's first import (its CUDA build goes through jittor_impl/cuda_compat.py)
#   profile    a quick gpt2.md training benchmark of every variant with a kernel breakdown
#   alignment  the GPU tests of the alignment suite and of tests/ (both backends on CUDA)
#   work       `work.sh` with the GPU defaults up to the final check (scoring needs Java and
#              runs afterwards on a CPU machine: `bash work.sh --preset cuda --run gpu-default --logs_dir logs`)
#   alignment+work  both at once (the tests mostly compile on the CPU; work.sh uses the GPU)
#   benchmark  the full benchmark: gpt2.md training of every variant and peer (microsoft/LoRA's
#              code too when REFERENCE_SRC names a checkout of it), peak memory of gpt2.sm and
#              gpt2.lg, beam search over the test split
# Each stage logs to OUT/<stage>.log and its exit code to OUT/progress.log; a failed stage does
# not stop the next. OUT/progress.log ends with "done".
#   GPT2_VOCAB_DIR=... E2E_DATA_DIR=... bash scripts/gpu_run.sh OUT [stage ...]
# Optional: REFERENCE_SRC (microsoft/LoRA checkout, a benchmark peer), BENCH_STEPS, BENCH_ARGS
# (more benchmark.py arguments), ALIGN_ARGS (more pytest arguments, e.g. "-n 4 --dist loadfile").
# The issue-14 run: REFERENCE_SRC=<checkout> BENCH_STEPS=10 ALIGN_ARGS="-n 4 --dist loadfile"
#   BENCH_ARGS="--backends=torch,torch+compile,jittor,hf+peft,hf+peft+compile,reference,reference+bf16"
#   bash scripts/gpu_run.sh OUT warmup alignment benchmark
set -u
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu_out}" && cd "${1:-gpu_out}" && pwd)
shift || true
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(warmup alignment work benchmark)
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/progress.log"; }
step() {  # step NAME COMMAND...: run it, log its exit code and duration
  local name=$1; shift
  local started=$SECONDS
  log "start $name"
  "$@" > "$out/$name.log" 2>&1
  log "end $name: exit $? after $((SECONDS - started))s"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
git log -1 --format='commit %H %s' > "$out/commit.txt" 2>&1
git status --short >> "$out/commit.txt" 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's packages, installed or not
run_alignment() {
  mkdir -p "$out/alignment"
  # test_decode/test_metrics import pycocoevalcap, absent on the GPU machine; they have no GPU tests
  # ALIGN_ARGS: extra pytest arguments (e.g. "-n 4 --dist loadfile" with pytest-xdist)
  step alignment env ALIGNMENT_REPORT_DIR="$out/alignment" python3 -m pytest alignment/ tests/ \
    -m gpu -v -rs -p no:cacheprovider --ignore=tests/test_decode.py --ignore=tests/test_metrics.py \
    ${ALIGN_ARGS:-}
}
run_work() {
  step work bash work.sh --preset cuda --run gpu-default --logs_dir logs --until check
  tar czf "$out/gpu-default-run.tgz" --ignore-failed-read runs/gpu-default/stages.json \
    runs/gpu-default/final_check.json runs/gpu-default/*/train_log.jsonl \
    runs/gpu-default/*/train_summary.json runs/gpu-default/*/run_config.json \
    runs/gpu-default/*/predict.jsonl runs/gpu-default/*/e2e_*.txt 2>> "$out/progress.log"
}
run_benchmark() {
  test_data=runs/gpu-default/data/test.jsonl
  if [ ! -f "$test_data" ]; then
    python3 scripts/prepare_e2e.py --out_dir runs/bench-data > "$out/bench-data.log" 2>&1
    test_data=runs/bench-data/test.jsonl
  fi
  # BENCH_ARGS: extra arguments (e.g. --extra_cards ""); REFERENCE_SRC: a microsoft/LoRA checkout
  step benchmark python3 scripts/benchmark.py --steps "${BENCH_STEPS:-20}" --warmup 5 --profile \
    ${REFERENCE_SRC:+--reference_src "$REFERENCE_SRC"} ${BENCH_ARGS:-} \
    --test_data "$test_data" --out "$out/benchmark.md"
}
for stage in "${stages[@]}"; do
  case $stage in
    warmup) step warmup python3 scripts/jittor_warmup.py ;;
    profile) step profile python3 scripts/benchmark.py --cards gpt2.md --steps 10 --warmup 5 \
               --profile --out "$out/profile.md" ;;
    alignment) run_alignment ;;
    work) run_work ;;
    alignment+work) run_alignment & run_work & wait ;;  # compiling tests beside a GPU-bound run
    benchmark) run_benchmark ;;
    *) log "unknown stage $stage" ;;
  esac
done
log "done"
