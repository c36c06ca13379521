#!/usr/bin/env bash
# The end-to-end alignment run: data -> base model -> LoRA fine-tuning with torch and with jittor
# (identical weights, data order and seeds) -> beam search + E2E metrics -> logits/gradient check
# -> runs/<run>/report.md with loss-curve plots (--logs_dir DIR: DIR/<run>/ instead). `bash work.sh --help` lists every flag.
# No arguments: a ~15-minute CPU run (or the GPU defaults when a CUDA GPU is present).
# `--task pretrain|classify|instruct|peft` runs those tasks instead (shared/pipeline/task_pipelines.py).
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
# The other tasks' data (bash work.sh --task pretrain|classify|instruct): TEXT_DATA /
# SMS_SPAM_DATA / INSTRUCT_DATA, else the shared copies beside the checkout.
if [ -z "${TEXT_DATA:-}" ] && [ -f ../shared/data/text/the-verdict.txt ]; then
  export TEXT_DATA="$(cd ../shared/data/text && pwd)/the-verdict.txt"
fi
if [ -z "${SMS_SPAM_DATA:-}" ] && [ -f ../shared/data/sms-spam/SMSSpamCollection ]; then
  export SMS_SPAM_DATA="$(cd ../shared/data/sms-spam && pwd)/SMSSpamCollection"
fi
if [ -z "${INSTRUCT_DATA:-}" ] && [ -f ../shared/data/instruct/instruction-data.json ]; then
  export INSTRUCT_DATA="$(cd ../shared/data/instruct && pwd)/instruction-data.json"
fi
# The scripts import this checkout's packages (also when another copy is pip-installed).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 scripts/run_pipeline.py "$@"
