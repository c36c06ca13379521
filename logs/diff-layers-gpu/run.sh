#!/usr/bin/env bash
# The command behind logs/diff-layers-gpu: scripts/diff_layers.py on the tiny trained E2E model
# (alignment/tiny_e2e_model.py: n_embd 64, 2 layers, LoRA rank 4; 300 Adam steps on E2E,
# trained here first), 2 validation batches of 4 x 128 tokens, fp32 and bf16 on CUDA, through
# alignment.auto_diff. Run from the repository root on a CUDA machine:
#   GPT2_VOCAB_DIR=... E2E_DATA_DIR=... bash logs/diff-layers-gpu/run.sh [OUT]
# OUT: the folder written (default $OUT, else logs/diff-layers-gpu): OUT/fp32 and OUT/bf16
# (diff_layers.{md,json,png} each), OUT/gpu.txt, OUT/commit.txt, OUT/run.log.
# DEVICE=cpu checks the script on a CPU machine: fp32 only (the bf16 rule is judged on CUDA only,
# alignment/compare.py). Exit status: 0 when every run passed, else the last failing run's.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-${OUT:-logs/diff-layers-gpu}}
device=${DEVICE:-cuda}
precisions=(fp32 bf16)
[ "$device" = cuda ] || precisions=(fp32)
mkdir -p "$out" && out=$(cd "$out" && pwd)
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec > >(tee "$out/run.log") 2>&1
started=$SECONDS
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" || exit 2
fi
{ git log -1 --format='commit %H %s'; git status --short; } > "$out/commit.txt" 2>&1
python3 scripts/prepare_e2e.py --out_dir "$work/data" || exit 2
python3 - "$work/tiny_e2e.safetensors" <<'PY' || exit 2
import sys
from alignment.tiny_e2e_model import trained_state
from shared.model.checkpoint import save_checkpoint
from shared.runtime.paths import resolve_e2e_dir, resolve_vocab_dir
save_checkpoint(sys.argv[1], trained_state(resolve_vocab_dir(), resolve_e2e_dir()))
PY
echo "data and checkpoint: $((SECONDS - started)) s"
status=0
for precision in "${precisions[@]}"; do
  python3 scripts/diff_layers.py --init_checkpoint "$work/tiny_e2e.safetensors" --n_embd 64 \
    --n_layer 2 --n_head 4 --lora_dim 4 --lora_alpha 32 --data "$work/data/valid.jsonl" \
    --batch_size 4 --batches 2 --seq_len 128 --device "$device" --precision "$precision" \
    --out "$out/$precision"
  code=$?
  [ $code -eq 0 ] || status=$code
  echo "$precision: exit $code after $((SECONDS - started)) s"
done
exit $status
