#!/usr/bin/env bash
# Train M3-lite on one GPU inside a time budget: time 40 steps first, then size the run to fit.
# Usage: scripts/gpu_train.sh SECONDS [train options]; results (model, log, evals) go to $OUT/train.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-gpu}
BUDGET=${1:-420}
shift || true
mkdir -p "$OUT/train"
start=$(date +%s)
python3 -m m3lite.train --out /tmp/probe --steps 40 --warmup-steps 20 --eval-every 1000 "$@" > /tmp/probe.log 2>&1 \
  || { tail -20 /tmp/probe.log; exit 1; }
probe=$(( $(date +%s) - start ))
steps=$(( (BUDGET * 40 / (probe > 0 ? probe : 1)) / 100 * 100 ))
echo "40 steps took ${probe}s (startup and one evaluation included): training $steps steps"
timeout $(( BUDGET + 120 )) python3 -m m3lite.train --out "$OUT/train" --steps "$steps" --eval-every $(( steps / 4 )) \
  --ckpt-every 250 "$@" 2>&1 | tr '\r' '\n' | grep -E '^\{|Error|error' | tail -20
ls -la "$OUT/train"
