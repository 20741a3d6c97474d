#!/usr/bin/env bash
# The shipped checkpoint's second phase (haystacks of 256 to 1024 tokens, MSA from the first step),
# on every GPU of the machine, then its measurements (evals on one GPU, the two scripts on the CPU).
# Usage: scripts/gpu_phase2.sh PHASE1_MODEL.safetensors SECONDS   (writes $OUT/phase2/, which must not exist)
# Options, as environment variables:
#   PHASE2_STEPS=N    its length (default 800, as for the shipped checkpoint)
#   EVAL_EVERY=N      evaluations every N steps (default 200), checkpoints every N / 2
#   SEED=N            the training seed (default 0; a continuation with the same seed sees the same batches)
#   BATCH=N           examples per GPU and step (default 32)
#   CONCENTRATE=W     phase 2 adds the concentration loss with weight W (m3lite.train --concentrate; default 0)
#   SKIP_MEASURES=1   train only (measure later with scripts/gpu_measure.sh)
#   CONTINUE_STEPS=N  first continue phase 1 (256-token haystacks, lr 1e-3) for N steps, into $OUT/phase1b/
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-phase2}
INIT=$1 BUDGET=$2
EVAL_EVERY=${EVAL_EVERY:-200} SEED=${SEED:-0} BATCH=${BATCH:-32}
GPUS=$(nvidia-smi -L | wc -l)

run() {   # run NAME OPTIONS...: one DDP training run into $OUT/NAME, from $INIT; then INIT is its model
  local dir=$OUT/$1
  shift
  if [ -e "$dir" ]; then echo "$dir exists: give a fresh OUT"; exit 1; fi
  mkdir -p "$dir"
  timeout "$BUDGET" torchrun --standalone --nproc_per_node "$GPUS" -m m3lite.train --out "$dir" --init "$INIT" \
    --batch "$BATCH" --warmup-steps 0 --lr 1e-3 --seed "$SEED" --tasks caption video transcribe haystack haystack haystack \
    "$@" > "$dir/stdout.txt" 2>&1
  local status=$?
  tr '\r' '\n' < "$dir/stdout.txt" | grep -E '^\{|Error|error' | tail -10
  if [ $status -ne 0 ] || [ ! -f "$dir/model.safetensors" ]; then
    echo "$dir: training failed (exit $status); see $dir/stdout.txt"; exit 1
  fi
  rm -f "$dir/checkpoint.pt" "$dir/stdout.txt"
  INIT=$dir/model.safetensors
}

if [ "${CONTINUE_STEPS:-0}" -gt 0 ]; then
  run phase1b --context-len 256 --steps "$CONTINUE_STEPS" --eval-every 400 --eval-examples 64 --ckpt-every 400
fi
run phase2 --context-len 1024 --min-context-len 256 --steps "${PHASE2_STEPS:-800}" --eval-every "$EVAL_EVERY" \
  --eval-examples 32 --ckpt-every $(( EVAL_EVERY / 2 )) --concentrate "${CONCENTRATE:-0}"
if [ -n "${SKIP_MEASURES:-}" ]; then exit 0; fi
bash scripts/gpu_measure.sh "$OUT/phase2/model.safetensors" "$BUDGET"
