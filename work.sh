#!/usr/bin/env bash
# The end-to-end alignment run: data -> base model -> LoRA fine-tuning with torch and with jittor
# (identical weights, data order and seeds) -> beam search + E2E metrics -> logits/gradient check
# -> logs/<run>/report.md with loss-curve plots. `bash work.sh --help` lists every flag.
# --task instruct runs instruction tuning instead (shared/instruct_pipeline.py).
# No arguments: a ~15-minute CPU run (or the GPU defaults when a CUDA GPU is present).
set -euo pipefail
cd "$(dirname "$0")"
# Offline data: E2E_DATA_DIR / GPT2_VOCAB_DIR (or --data_dir / --vocab_dir), else data/ from
# scripts/download_data.sh, else the offline set some machines keep beside the checkout.
if [ -z "${E2E_DATA_DIR:-}" ] && [ ! -f data/e2e/train.txt ] && [ -f ../shared/data/e2e-offline/train.txt ]; then
  export E2E_DATA_DIR="$(cd ../shared/data/e2e-offline && pwd)"
  echo "work.sh: using E2E_DATA_DIR=$E2E_DATA_DIR"
fi
if [ -z "${GPT2_VOCAB_DIR:-}" ] && [ ! -f data/gpt2/encoder.json ] && [ -f ../shared/data/gpt2/encoder.json ]; then
  export GPT2_VOCAB_DIR="$(cd ../shared/data/gpt2 && pwd)"
  echo "work.sh: using GPT2_VOCAB_DIR=$GPT2_VOCAB_DIR"
fi
# --task picks the experiment: e2e (the default) or instruct (Alpaca instruction tuning).
TASK=e2e
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --task) TASK="${2:-}"; shift 2 || { echo "work.sh: --task needs a value" >&2; exit 2; } ;;
    --task=*) TASK="${1#--task=}"; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$TASK" in
  e2e) exec python3 scripts/run_pipeline.py ${ARGS[@]+"${ARGS[@]}"} ;;
  instruct)
    if [ -z "${INSTRUCT_DATA:-}" ] && [ -f ../shared/data/instruct/instruction-data.json ]; then
      export INSTRUCT_DATA="$(cd ../shared/data/instruct && pwd)/instruction-data.json"
      echo "work.sh: using INSTRUCT_DATA=$INSTRUCT_DATA"
    fi
    exec python3 -m shared.instruct_pipeline ${ARGS[@]+"${ARGS[@]}"} ;;
  *) echo "work.sh: unknown --task '$TASK' (choose e2e or instruct)" >&2; exit 2 ;;
esac
