#!/usr/bin/env bash
# The GPU session behind the committed GPU logs, in one go: Jittor warm-up (its CUDA build goes
# through jittor_impl/cuda_compat.py on CUDA 13), the alignment suite with both backends on
# CUDA, `work.sh` with the GPU defaults (generation and the final check; scoring needs Java and
# runs afterwards on a CPU machine: `bash work.sh --preset cuda --run gpu-default`), and the
# benchmark. Each step logs to OUT and a failed step does not stop the next.
#   GPT2_VOCAB_DIR=... E2E_DATA_DIR=... bash scripts/gpu_run.sh OUT
set -u
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-gpu_out}" && cd "${1:-gpu_out}" && pwd)
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/progress.log"; }
step() {  # step NAME COMMAND...: run it, log its exit code and duration
  local name=$1; shift
  local started=$SECONDS
  log "start $name"
  "$@" > "$out/$name.log" 2>&1
  log "end $name: exit $? after $((SECONDS - started))s"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
export PYTHONUNBUFFERED=1
step warmup python3 scripts/jittor_warmup.py
mkdir -p "$out/alignment"
step alignment env ALIGNMENT_REPORT_DIR="$out/alignment" python3 -m pytest alignment/ -q -rs -p no:cacheprovider
step work bash work.sh --preset cuda --run gpu-default --until check
step benchmark python3 scripts/benchmark.py --steps 10 --warmup 3 --test_data runs/gpu-default/data/test.jsonl --out "$out/benchmark.md"
tar czf "$out/gpu-default-run.tgz" --ignore-failed-read runs/gpu-default/stages.json runs/gpu-default/logs \
  runs/gpu-default/data runs/gpu-default/final_check.json runs/gpu-default/base/train_log.jsonl \
  runs/gpu-default/base/train_summary.json runs/gpu-default/*/train_log.jsonl \
  runs/gpu-default/*/train_summary.json runs/gpu-default/*/run_config.json \
  runs/gpu-default/*/predict.jsonl runs/gpu-default/*/e2e_*.txt 2>> "$out/progress.log"
log "done"
