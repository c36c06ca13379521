#!/usr/bin/env bash
# Fetch the E2E NLG data (microsoft/LoRA's copy) and the GPT-2 vocabulary.
#   bash scripts/download_data.sh [DEST]     DEST defaults to <repo>/data
# Writes DEST/e2e/{train,valid,test}.txt and DEST/gpt2/{encoder.json,vocab.bpe}; each file goes to
# a temporary name first, so an interrupted download never leaves a half file behind.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/data}"
E2E_URL="https://raw.githubusercontent.com/microsoft/LoRA/main/examples/NLG/data/e2e"
GPT2_URL="https://openaipublic.blob.core.windows.net/gpt-2/models/124M"

if command -v curl >/dev/null 2>&1; then
  fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }
elif command -v wget >/dev/null 2>&1; then
  fetch() { wget -q --tries=3 -O "$2" "$1"; }
else
  echo "download_data.sh: error: neither curl nor wget is installed" >&2
  exit 1
fi

get() {  # get URL FILE
  local tmp="$2.part"
  if ! fetch "$1" "$tmp"; then
    rm -f "$tmp"
    echo "download_data.sh: error: could not download $1 (no internet, or the URL moved?)" >&2
    exit 1
  fi
  if [ ! -s "$tmp" ]; then
    rm -f "$tmp"
    echo "download_data.sh: error: $1 came back empty" >&2
    exit 1
  fi
  mv "$tmp" "$2"
  echo "  $2"
}

mkdir -p "$DEST/e2e" "$DEST/gpt2"
echo "E2E NLG -> $DEST/e2e"
for split in train valid test; do
  get "$E2E_URL/$split.txt" "$DEST/e2e/$split.txt"
done
echo "GPT-2 vocabulary -> $DEST/gpt2"
for name in encoder.json vocab.bpe; do
  get "$GPT2_URL/$name" "$DEST/gpt2/$name"
done
echo "done. Next: python scripts/prepare_e2e.py --data_dir $DEST/e2e --vocab $DEST/gpt2"
