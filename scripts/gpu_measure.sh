#!/usr/bin/env bash
# The measurements of a trained model, written beside it: the evaluations on one GPU (task accuracy,
# the haystack at 256 to 4096 tokens, the indexer's recall), recall against top-k and the
# attention's sharpness on the CPU. Usage: scripts/gpu_measure.sh MODEL.safetensors SECONDS
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
MODEL_FILE=$1 BUDGET=$2
RUN=$(dirname "$MODEL_FILE")
python3 scripts/attention_sharpness.py "$MODEL_FILE" --out "$RUN/attention-sharpness.json" > "$RUN/attention-sharpness.txt" 2>&1 &
python3 scripts/recall_vs_topk.py "$MODEL_FILE" --out "$RUN/recall-vs-topk.json" > "$RUN/recall-vs-topk.txt" 2>&1 &
timeout "$BUDGET" python3 -m m3lite.evals "$MODEL_FILE" --device cuda --lengths 256 512 1024 2048 4096 \
  --out "$RUN/haystack.json" > "$RUN/evals.txt" 2>&1
wait
tail -n 30 "$RUN"/attention-sharpness.txt "$RUN"/recall-vs-topk.txt "$RUN"/evals.txt
