#!/usr/bin/env bash
# GPU machine: the fused kernels' GPU tests, then Jittor's gpt2.md training step with them (per-kernel
# profile), the bf16 mixed-precision tests, and the same step with them off, as time allows.
set -u
T0=$SECONDS
O=${OUT:-/tmp/out}; W=/tmp/gpuout; mkdir -p "$W"
left() { echo $((470 - (SECONDS - T0))); }
note() { echo "[$((SECONDS - T0))s] $*" | tee -a "$W/times.log"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export GPT2_VOCAB_DIR=$PWD/.dev14-data/gpt2 E2E_DATA_DIR=$PWD/.dev14-data/e2e-offline
pack() { tar czf "$O/gpu.tgz" -C "$W" . ; }
trap pack EXIT
XD=$(python3 -c "import xdist" 2>/dev/null && echo "-n 2")
note "start xdist=[$XD]"
timeout 200 bash scripts/gpu_run.sh "$W" warmup
note "warmup done"
timeout 120 python3 -m pytest -m gpu -q -rA -p no:cacheprovider $XD tests/test_jittor_fused_kernels.py > "$W/gputests.log" 2>&1
note "kernel tests rc=$?"; tail -3 "$W/gputests.log"
OPSET=gelu,layer_norm,softmax
if grep -q "^FAILED.*softmax" "$W/gputests.log"; then OPSET=gelu,layer_norm; fi
if grep -q "^FAILED.*test_fused_kernels_\(match\|bf16\)" "$W/gputests.log"; then OPSET=${OPSET#gelu,layer_norm}; OPSET=${OPSET#,}; fi
if grep -q "^ERROR\|timed out\|Timeout" "$W/gputests.log"; then :; fi
note "JLA_FUSED_OPS=$OPSET"
JLA_FUSED_OPS=$OPSET timeout $(( $(left) < 260 ? $(left) : 260 )) python3 scripts/benchmark.py --backends jittor --cards gpt2.md \
  --extra_cards "" --steps 6 --warmup 3 --profile --out "$W/jprof.md" > "$W/jprof.log" 2>&1
note "fused benchmark rc=$?"; grep "| gpt2.md" "$W/jprof.md"
timeout $(( $(left) < 150 ? $(left) : 150 )) python3 -m pytest -m gpu -q -rA -p no:cacheprovider $XD \
  alignment/test_mixed_precision.py > "$W/mixed_precision.log" 2>&1
note "mixed precision tests rc=$?"; tail -3 "$W/mixed_precision.log"
if [ "$(left)" -gt 60 ]; then
  JLA_FUSED_KERNELS=off timeout $(left) python3 scripts/benchmark.py --backends jittor --cards gpt2.md \
    --extra_cards "" --steps 6 --warmup 3 --out "$W/off.md" > "$W/off.log" 2>&1
  note "off benchmark rc=$?"; grep "| gpt2.md" "$W/off.md"
fi
note end
