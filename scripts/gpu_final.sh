#!/usr/bin/env bash
# The shipped checkpoint's run: DDP on every GPU of the machine (torchrun), with optional side runs
# (single-GPU diagnostics) sharing the GPUs. Usage: scripts/gpu_final.sh SECONDS STEPS "side opts"...
# MODEL="qk_gain=4 index_rope_dim=16" sets M3Config fields of the main run (default: none).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-final}
BUDGET=$1 STEPS=$2
shift 2
GPUS=$(nvidia-smi -L | wc -l)
i=0
for run in "$@"; do
  read -r name opts <<< "$run"
  mkdir -p "$OUT/$name"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$(( i++ % GPUS )) timeout "$BUDGET" python3 -m m3lite.train --out "$OUT/$name" $opts \
    > "$OUT/$name/stdout.txt" 2>&1 &
done
mkdir -p "$OUT/final"
timeout "$BUDGET" torchrun --standalone --nproc_per_node "$GPUS" -m m3lite.train --out "$OUT/final" --config small \
  --batch 32 --context-len 256 --steps "$STEPS" --curriculum-steps $(( STEPS / 3 )) --lr 2e-3 \
  --tasks caption video transcribe haystack haystack haystack --eval-every 500 --eval-examples 64 --ckpt-every 250 \
  ${MODEL:+--model $MODEL} > "$OUT/final/stdout.txt" 2>&1
wait
for name in final $(for run in "$@"; do echo "${run%% *}"; done); do
  echo "== $name"
  tr '\r' '\n' < "$OUT/$name/stdout.txt" | grep -E '^\{|Error|error' | tail -10
  rm -f "$OUT/$name/checkpoint.pt"
done
