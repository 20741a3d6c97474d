#!/usr/bin/env bash
# Train several M3-lite variants at once, spread over the GPUs (the small model leaves most of one idle).
# Usage: scripts/gpu_sweep.sh SECONDS "name1 opts..." "name2 opts..." ...
# Each run writes $OUT/NAME/ (log.jsonl, model.safetensors); evaluations are printed at the end.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-sweep}
BUDGET=$1
shift
GPUS=$(nvidia-smi -L | wc -l)
i=0
for run in "$@"; do
  read -r name opts <<< "$run"
  mkdir -p "$OUT/$name"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$(( i++ % GPUS )) timeout "$BUDGET" python3 -m m3lite.train --out "$OUT/$name" $opts > "$OUT/$name/stdout.txt" 2>&1 &
done
wait
for run in "$@"; do
  read -r name opts <<< "$run"
  echo "== $name: $opts"
  tr '\r' '\n' < "$OUT/$name/stdout.txt" | grep -E '^\{|Error' | tail -8
  rm -f "$OUT/$name/checkpoint.pt"
done
