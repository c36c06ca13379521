#!/usr/bin/env bash
# The short runs behind README.md: a checkout's CPU fp32 training, logged every step, so that two
# checkouts can be compared bit for bit (loss and grad_norm of each step in OUT/train_log.jsonl).
#   bash check.sh base TREE OUT DATA          40 full-training steps of the torch base model
#   bash check.sh lora TREE OUT DATA BASE [--shared_dropout]
#                                             4 Jittor LoRA steps from BASE (a base.safetensors)
# DATA: a work.sh run's data/ folder (train.jsonl, valid.jsonl); the model is the cpu preset's.
set -euo pipefail
mode=$1 tree=$(cd "$2" && pwd) out=$3 data=$4
shape=(--model_card gpt2.sm --n_embd 96 --n_layer 3 --n_head 4 --seq_len 96 --precision fp32
       --random_seed 10 --train_data "$data/train.jsonl" --valid_data "$data/valid.jsonl"
       --train_batch_size 8 --valid_batch_size 16 --lr 0.002 --weight_decay 0.01 --correct_bias
       --log_interval 1 --eval_interval 700 --save_interval 700 --device cpu --work_dir "$out")
export cache_name="${cache_name:-master}"  # Jittor names its cache after the git branch: keep one
cd "$tree"
case $mode in
  base) PYTHONPATH="$tree" python3 scripts/gpt2_ft.py --backend torch "${shape[@]}" --lora_dim 0 \
          --clip 1.0 --warmup_step 35 --max_step 40 --scheduler cosine --max_eval_batches 8 ;;
  lora) PYTHONPATH="$tree" python3 scripts/gpt2_ft.py --backend jittor "${shape[@]}" \
          --init_checkpoint "$5" --lora_dim 4 --lora_alpha 32 --lora_dropout 0.1 --clip 0.0 \
          --label_smooth 0.1 --warmup_step 2 --max_step 4 --scheduler linear --attn math \
          --max_eval_batches 1 "${@:6}" ;;
  *) echo "check.sh: mode must be base or lora, got '$mode'" >&2; exit 2 ;;
esac
