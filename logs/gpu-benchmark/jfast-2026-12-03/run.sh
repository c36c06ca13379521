#!/usr/bin/env bash
# One device call of branch jfast23 (Jittor flash attention, products, 8 GiB cap), stage by stage,
# each under its own time limit so the call ends inside the tool's 10 minutes. Run from the
# worktree root on the GPU machine (carried as .gpu-tree, wheels as ../.device-wheels):
#   bash logs/gpu-benchmark/jfast-2026-12-03/run.sh STAGE...   (stages: tests products bench cap final)
# Everything lands in $OUT/w, packed into $OUT/jfast.tgz at the end (and on any exit).
set -u
T0=$SECONDS
BUDGET=${BUDGET:-560}
O=${OUT:-/tmp/out}; W=$O/w; mkdir -p "$W"
left() { echo $((BUDGET - (SECONDS - T0))); }
note() { echo "[$((SECONDS - T0))s] $*" | tee -a "$W/progress.log"; }
lim() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; echo $want; }
pack() { tar czf "$O/jfast.tgz" -C "$W" . ; }
trap pack EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../.device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$W/gpu.txt" 2>&1
git log -1 --format='commit %H %s' > "$W/commit.txt" 2>&1; git status --short >> "$W/commit.txt" 2>&1
note "start: $*"
timeout $(lim 220) python3 scripts/jittor_warmup.py > "$W/warmup.log" 2>&1
note "warmup rc=$?"
for stage in "$@"; do
  case $stage in
    tests)
      timeout $(lim 200) python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_jittor_flash_attention.py \
        tests/test_jittor_fused_kernels.py > "$W/gpu-tests.log" 2>&1
      note "gpu tests rc=$?: $(tail -1 "$W/gpu-tests.log")" ;;
    tests4)  # the new kernels' GPU tests and the bf16 alignment tests, 4 processes (compiling in parallel)
      GPT2_VOCAB_DIR=$PWD/.device-data/gpt2 E2E_DATA_DIR=$PWD/.device-data/e2e-offline timeout $(lim 150) \
        python3 -m pytest -m gpu -q -rA -p no:cacheprovider -n 4 --dist loadfile tests/test_jittor_flash_attention.py \
        tests/test_jittor_fused_loss.py tests/test_jittor_fused_kernels.py alignment/test_mixed_precision.py \
        > "$W/gpu-tests4.log" 2>&1
      note "gpu tests (4 files) rc=$?: $(tail -1 "$W/gpu-tests4.log")" ;;
    jbench)
      timeout $(lim 170) python3 scripts/benchmark.py --backends jittor,torch --cards gpt2.md --extra_cards "" \
        --steps 10 --warmup 5 --profile --out "$W/final.md" > "$W/final.log" 2>&1
      note "jittor+torch bench rc=$?"; grep "^train\|FAILED" "$W/final.log" ;;
    products)
      timeout $(lim 120) python3 scripts/bench_products.py --repeats 3 --out "$W/products.md" > "$W/products.log" 2>&1
      note "products rc=$?"; tail -3 "$W/products.md" ;;
    bench)
      timeout $(lim 240) python3 scripts/benchmark.py --backends jittor --cards gpt2.md --extra_cards "" \
        --steps 10 --warmup 5 --profile --out "$W/bench.md" > "$W/bench.log" 2>&1
      note "bench rc=$?"; grep "^train\|FAILED" "$W/bench.log" ;;
    cap)
      timeout $(lim 170) python3 scripts/benchmark.py --backends jittor,torch --cards gpt2.md --extra_cards "" \
        --steps 10 --warmup 5 --device_mem_cap_gib 8 --out "$W/cap8.md" > "$W/cap8.log" 2>&1
      note "cap8 rc=$?"; grep "^train\|FAILED" "$W/cap8.log" ;;
    jab)  # the same step without this branch's two new kernels (flash attention, cross-entropy)
      JLA_FUSED_OPS=gelu,layer_norm,softmax timeout $(lim 150) python3 scripts/benchmark.py --backends jittor \
        --cards gpt2.md --extra_cards "" --steps 10 --warmup 5 --out "$W/ab-old-kernels.md" > "$W/ab-old-kernels.log" 2>&1
      note "A/B old kernels rc=$?"; grep "^train\|FAILED" "$W/ab-old-kernels.log" ;;
    final)
      timeout $(lim 400) python3 scripts/benchmark.py --backends torch,torch+compile,jittor --cards gpt2.md \
        --extra_cards "" --steps 10 --warmup 5 --profile --out "$W/final.md" > "$W/final.log" 2>&1
      note "final rc=$?"; grep "^train\|FAILED" "$W/final.log" ;;
    *) note "unknown stage $stage" ;;
  esac
done
note end
