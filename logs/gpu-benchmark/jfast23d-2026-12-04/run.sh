#!/usr/bin/env bash
# One device call of branch jfast23d, stage by stage, each under its own time limit so the call ends
# inside the tool's 10 minutes. Run from the worktree root on the GPU machine (carried as .gpu-tree;
# wheels as ../.device-wheels; ../.device-data holds gpt2/ (vocabulary), e2e-offline/,
# e2e-jsonl/test.jsonl (prepare_e2e.py's output) and microsoft-LoRA/ (examples/NLG/src and loralib
# of microsoft/LoRA c4593f0)):
#   BUDGET=570 TAG=c1 TESTS="alignment/" NPROC=14 bash logs/gpu-benchmark/jfast23d-2026-12-04/run.sh STAGE...
# Everything lands in $OUT/w, packed into $OUT/jfast23d-$TAG.tgz at the end (and on any exit).
# The GPU tests print one line per finished test, stamped with the call's clock ([s]), so a run cut
# by its limit still says which tests passed and how long they took.
set -u
T0=$SECONDS
BUDGET=${BUDGET:-570}
TAG=${TAG:-c}
O=${OUT:-/tmp/out}; W=$O/w; mkdir -p "$W"
D=$(cd ../.device-data && pwd)
HERE=logs/gpu-benchmark/jfast23d-2026-12-04
REC=/tmp/jfast23d-record; mkdir -p "$REC"
left() { echo $((BUDGET - (SECONDS - T0))); }
note() { echo "[$((SECONDS - T0))s] $*" | tee -a "$W/progress.log"; }
lim() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; [ "$want" -lt 1 ] && want=1; echo $want; }
stamp() { while IFS= read -r line; do echo "[$((SECONDS - T0))s] $line"; done; }
pack() { cp "$REC"/*.md "$REC"/*.json "$W/" 2>/dev/null; tar czf "$O/jfast23d-$TAG.tgz" -C "$W" . ; }
trap pack EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site ../.device-wheels/*.whl || exit 1
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
    anatomy)  # step time at batch 4/8/16, every jittor kernel, CUPTI's view of the step, host cProfile
      timeout $(lim 200) python3 $HERE/jittor_step_anatomy.py "$W" > "$W/anatomy.log" 2>&1
      note "anatomy rc=$?"; clean "$W/anatomy.log" ;;
    tests)  # the GPU tests named by $TESTS (default: all of alignment/ and tests/) or, one node id
            # a line, in the file $TESTS_FILE; $NPROC workers; TESTS_RESERVE seconds left to later stages
      want=$(( $(left) - ${TESTS_RESERVE:-0} ))
      if [ -n "${TESTS_FILE:-}" ]; then  # less the tests an earlier call on this machine passed
        touch "$REC/passed.txt"; mapfile -t SEL < <(grep -vxFf "$REC/passed.txt" "$TESTS_FILE")
      else read -ra SEL <<< "${TESTS:-alignment/ tests/}"; fi
      note "tests: ${#SEL[@]} selected"
      set -o pipefail
      # -k: pytest-xdist outlived its TERM by 40 s in call 2; --line-buffered: a killed grep loses
      # its block buffer (call 2 and 4 kept only the first 8 KiB of their test logs)
      timeout -k 10 $(lim $((want - 12))) python3 -m pytest "${SEL[@]}" -m gpu -v -rfE -p no:cacheprovider \
        -n ${NPROC:-14} --dist load --durations=0 2>&1 | stamp \
        | grep --line-buffered -v "Compiling Operators\|SyntaxWarning\|PytestBenchmarkWarning" > "$W/gpu-tests-$TAG.log"
      rc=$?; set +o pipefail
      grep -o " PASSED [^ ]*" "$W/gpu-tests-$TAG.log" | cut -d' ' -f3 >> "$REC/passed.txt"
      note "gpu tests rc=$rc: $(grep -c ' PASSED ' "$W/gpu-tests-$TAG.log") passed, $(grep -c ' FAILED \| ERROR ' "$W/gpu-tests-$TAG.log") failed; $(tail -1 "$W/gpu-tests-$TAG.log")" ;;
    jbench)  # jittor and torch, gpt2.md, profiled: the first rows of the final record (train resumes it)
      timeout $(lim 200) "${BENCH[@]}" --backends jittor,torch --cards gpt2.md --extra_cards "" --profile \
        --resume --out "$REC/final.md" > "$W/$TAG-bench.log" 2>&1
      note "jittor+torch bench rc=$?"; clean "$W/$TAG-bench.log"; grep "^| gpt2" "$REC/final.md" ;;
    jbench-exact)  # jittor alone, unprofiled, with the optimizer's exact loop (JLA_FUSED_OPS without it)
      JLA_FUSED_OPS=gelu,layer_norm,softmax,attention,cross_entropy timeout $(lim 120) "${BENCH[@]}" \
        --backends jittor --cards gpt2.md --extra_cards "" --out "$REC/$TAG-exact.md" > "$W/$TAG-exact.log" 2>&1
      note "jittor exact-optimizer bench rc=$?"; clean "$W/$TAG-exact.log"; grep "^| gpt2" "$REC/$TAG-exact.md" ;;
    beam)  # beam search, 630 test MRs, both caches, both backends, profiled (resumes jbench's record)
      timeout $(lim 400) "${BENCH[@]}" --backends jittor,torch --cards gpt2.md --extra_cards "" --profile \
        --test_data "$D/e2e-jsonl/test.jsonl" --resume --out "$REC/$TAG-bench.md" > "$W/$TAG-beam.log" 2>&1
      note "beam rc=$?"; clean "$W/$TAG-beam.log"; grep "^| gpt2" "$REC/$TAG-bench.md" ;;
    train)  # the final record, part 1: gpt2.md, every variant and peer, profiled
      timeout $(lim 540) "${BENCH[@]}" --backends $ALL --cards gpt2.md --extra_cards "" --profile \
        --reference_src "$D/microsoft-LoRA" --resume --out "$REC/final.md" > "$W/final-train.log" 2>&1
      note "final train rc=$?"; clean "$W/final-train.log"; grep "^| gpt2" "$REC/final.md" ;;
    rest)  # part 2: gpt2.sm / gpt2.lg for both backends and beam search (630 test MRs, both caches)
      timeout $(lim 540) "${BENCH[@]}" --backends $ALL --cards gpt2.md --extra_cards gpt2.sm,gpt2.lg \
        --extra_backends torch,jittor --profile --reference_src "$D/microsoft-LoRA" \
        --test_data "$D/e2e-jsonl/test.jsonl" --resume --out "$REC/final.md" > "$W/final-rest.log" 2>&1
      note "final rest rc=$?"; clean "$W/final-rest.log"; grep "^| gpt2" "$REC/final.md" ;;
    peft)  # part 3: one row per PEFT method and backend on gpt2.md
      timeout $(lim 540) "${BENCH[@]}" --backends $ALL --cards gpt2.md --extra_cards gpt2.sm,gpt2.lg \
        --extra_backends torch,jittor --peft_methods lora,full,top2,bitfit,adapter,prompt,ptuning,prefix \
        --profile --reference_src "$D/microsoft-LoRA" --test_data "$D/e2e-jsonl/test.jsonl" --resume \
        --out "$REC/final.md" > "$W/final-peft.log" 2>&1
      note "final peft rc=$?"; clean "$W/final-peft.log"; grep "^| gpt2" "$REC/final.md" ;;
    cap)
      timeout $(lim 170) "${BENCH[@]}" --backends jittor,torch --cards gpt2.md --extra_cards "" \
        --device_mem_cap_gib 8 --out "$W/cap8.md" > "$W/cap8.log" 2>&1
      note "cap8 rc=$?"; clean "$W/cap8.log"; grep "^| gpt2" "$W/cap8.md" ;;
    *) note "unknown stage $stage" ;;
  esac
done
note end
