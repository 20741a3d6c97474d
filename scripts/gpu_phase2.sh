#!/usr/bin/env bash
# The shipped checkpoint's second phase (haystacks of 256 to 1024 tokens, MSA from the first step),
# on every GPU of the machine, then its measurements on one GPU.
# Usage: scripts/gpu_phase2.sh PHASE1_MODEL.safetensors SECONDS   (writes $OUT/phase2/)
# PHASE2_STEPS=N sets its length (default 800). CONTINUE_STEPS=N first continues phase 1 (256-token haystacks, lr 1e-3) for N steps, into $OUT/phase1b/.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-phase2}
INIT=$1 BUDGET=$2
GPUS=$(nvidia-smi -L | wc -l)
if [ "${CONTINUE_STEPS:-0}" -gt 0 ]; then
  mkdir -p "$OUT/phase1b"
  timeout "$BUDGET" torchrun --standalone --nproc_per_node "$GPUS" -m m3lite.train --out "$OUT/phase1b" --init "$INIT" \
    --batch 32 --context-len 256 --steps "$CONTINUE_STEPS" --warmup-steps 0 --lr 1e-3 \
    --tasks caption video transcribe haystack haystack haystack --eval-every 400 --eval-examples 64 --ckpt-every 400 \
    > "$OUT/phase1b/stdout.txt" 2>&1
  tr '\r' '\n' < "$OUT/phase1b/stdout.txt" | grep -E '^\{|Error|error' | tail -10
  rm -f "$OUT/phase1b/checkpoint.pt" "$OUT/phase1b/stdout.txt"
  INIT=$OUT/phase1b/model.safetensors
fi
RUN=$OUT/phase2
mkdir -p "$RUN"
timeout "$BUDGET" torchrun --standalone --nproc_per_node "$GPUS" -m m3lite.train --out "$RUN" --init "$INIT" \
  --batch 32 --context-len 1024 --min-context-len 256 --steps "${PHASE2_STEPS:-800}" --warmup-steps 0 --lr 1e-3 \
  --tasks caption video transcribe haystack haystack haystack --eval-every 400 --eval-examples 32 --ckpt-every 200 \
  > "$RUN/stdout.txt" 2>&1
tr '\r' '\n' < "$RUN/stdout.txt" | grep -E '^\{|Error|error' | tail -10
rm -f "$RUN/checkpoint.pt" "$RUN/stdout.txt"
MODEL=$RUN/model.safetensors
[ -f "$MODEL" ] || { echo "no model: phase 2 did not finish"; exit 1; }
python3 scripts/attention_sharpness.py "$MODEL" --out "$RUN/attention-sharpness.json" > "$RUN/attention-sharpness.txt" 2>&1 &
python3 scripts/recall_vs_topk.py "$MODEL" --out "$RUN/recall-vs-topk.json" > "$RUN/recall-vs-topk.txt" 2>&1 &
timeout "$BUDGET" python3 -m m3lite.evals "$MODEL" --device cuda --lengths 256 512 1024 2048 4096 --out "$RUN/haystack.json" \
  > "$RUN/evals.txt" 2>&1
wait
tail -n 30 "$RUN"/attention-sharpness.txt "$RUN"/recall-vs-topk.txt "$RUN"/evals.txt
