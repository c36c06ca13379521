#!/usr/bin/env bash
# One device call of the final measurements (2026-12-04), stage by stage, each under its own time
# limit so the call ends inside the tool's 10 minutes. Run from the repository root on the GPU
# machine with .device-wheels (jittor 1.3.11, numpy 1.26.4, astunparse) and .device-data carried:
# gpt2/ (vocabulary), e2e-offline/, e2e-jsonl/test.jsonl (prepare_e2e.py's output) and
# microsoft-LoRA/ (examples/NLG/src and loralib of microsoft/LoRA c4593f0)):
#   BUDGET=560 TAG=a bash logs/gpu-benchmark/final-2026-12-04/run.sh STAGE...
# The record starts from $SEED (default logs/benchmark.json; a previous call's final.json carries on
# from where that call stopped): same settings, same GPU kind, so --resume keeps its rows and
# measures only what is missing. Everything lands in $OUT/w.
set -u
T0=$SECONDS
BUDGET=${BUDGET:-560}
TAG=${TAG:-a}
O=${OUT:-/tmp/out}; W=$O/w; mkdir -p "$W"
D=$PWD/.device-data
HERE=logs/gpu-benchmark/final-2026-12-04
REC=/tmp/final-record; mkdir -p "$REC"
[ -f "$REC/final.json" ] || cp "${SEED:-logs/benchmark.json}" "$REC/final.json"
left() { echo $((BUDGET - (SECONDS - T0))); }
note() { echo "[$((SECONDS - T0))s] $*" | tee -a "$W/progress.log"; }
lim() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; [ "$want" -lt 1 ] && want=1; echo $want; }
stamp() { while IFS= read -r line; do echo "[$((SECONDS - T0))s] $line"; done; }
save() { cp "$REC"/*.md "$REC"/*.json "$W/" 2>/dev/null; }
trap save EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export GPT2_VOCAB_DIR=$D/gpt2 E2E_DATA_DIR=$D/e2e-offline
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$W/gpu.txt" 2>&1
note "start: $*"
timeout $(lim 220) python3 scripts/jittor_warmup.py > "$W/warmup.log" 2>&1
note "warmup rc=$?"
clean() { grep -v "Compiling Operators\|SyntaxWarning\|^\s*$" "$1" > "$1.tmp"; mv "$1.tmp" "$1"; }
BENCH=(python3 scripts/benchmark.py --steps 10 --warmup 5)
ALL=torch,torch+compile,jittor,hf+peft,hf+peft+compile,reference,reference+bf16
for stage in "$@"; do
  case $stage in
    tests)  # the GPU tests listed in gpu-tests.txt less those passed in earlier calls (passed-*.txt
            # here, and this machine's record), those matching $TESTS (a grep -E pattern) if set;
            # $NPROC workers
      cat $HERE/passed-*.txt "$REC/passed.txt" 2>/dev/null | sort -u > /tmp/passed-so-far.txt
      mapfile -t SEL < <(grep -vxFf /tmp/passed-so-far.txt $HERE/gpu-tests.txt | grep -E "${TESTS:-.}")
      note "tests: ${#SEL[@]} selected"
      set -o pipefail
      timeout -k 10 $(lim ${TESTS_S:-$(( $(left) - 12 ))}) python3 -m pytest "${SEL[@]}" -m gpu -v -rfE -p no:cacheprovider \
        -n ${NPROC:-12} --dist load 2>&1 | stamp \
        | grep --line-buffered -v "Compiling Operators\|SyntaxWarning\|PytestBenchmarkWarning" > "$W/gpu-tests-$TAG.log"
      rc=$?; set +o pipefail
      grep -o " PASSED [^ ]*" "$W/gpu-tests-$TAG.log" | cut -d' ' -f3 | tee -a "$REC/passed.txt" > "$W/passed-$TAG.txt"
      note "gpu tests rc=$rc: $(grep -c ' PASSED ' "$W/gpu-tests-$TAG.log") passed, $(grep -c ' FAILED \| ERROR ' "$W/gpu-tests-$TAG.log") failed; $(tail -1 "$W/gpu-tests-$TAG.log")" ;;
    rest)  # gpt2.sm / gpt2.lg for both backends and beam search (630 test MRs, both caches, both backends)
      timeout $(lim 360) "${BENCH[@]}" --backends $ALL --cards gpt2.md --extra_cards gpt2.sm,gpt2.lg \
        --extra_backends torch,jittor --profile --reference_src "$D/microsoft-LoRA" \
        --test_data "$D/e2e-jsonl/test.jsonl" --resume --out "$REC/final.md" > "$W/final-rest-$TAG.log" 2>&1
      note "final rest rc=$?"; clean "$W/final-rest-$TAG.log"; grep "^| gpt2" "$REC/final.md" ;;
    prefs)  # one row per PEFT method and per preference task, both backends, gpt2.md
      timeout $(lim $(( $(left) - 5 ))) "${BENCH[@]}" --backends $ALL --cards gpt2.md --extra_cards gpt2.sm,gpt2.lg \
        --extra_backends torch,jittor --peft_methods lora,full,top2,bitfit,adapter,prompt,ptuning,prefix \
        --preference_tasks reward,dpo,ppo --profile --reference_src "$D/microsoft-LoRA" \
        --test_data "$D/e2e-jsonl/test.jsonl" --resume --out "$REC/final.md" > "$W/final-prefs-$TAG.log" 2>&1
      note "final peft+preference rc=$?"; clean "$W/final-prefs-$TAG.log"; grep "^| gpt2" "$REC/final.md" ;;
    cap)  # the paper configuration under an 8 GiB cap, both backends
      timeout $(lim ${CAP_S:-200}) "${BENCH[@]}" --backends jittor,torch --cards gpt2.md --extra_cards "" \
        --device_mem_cap_gib 8 --out "$REC/cap8.md" > "$W/cap8-$TAG.log" 2>&1
      note "cap8 rc=$?"; clean "$W/cap8-$TAG.log"; grep "^| gpt2" "$REC/cap8.md" ;;
    *) note "unknown stage $stage" ;;
  esac
done
note end
