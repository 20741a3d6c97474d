#!/usr/bin/env bash
# One call on a GPU machine: the kernel tests compiled, compute-sanitizer over every kernel, then
# the prefill benchmark. Usage: scripts/gpu_run.sh [benchmark options]; results go to $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py > "$OUT/tests.txt" 2>&1
  tail -3 "$OUT/tests.txt"
  timeout 120 compute-sanitizer --tool memcheck python3 -m m3lite.kernels.smoke > "$OUT/sanitizer.txt" 2>&1
  tail -9 "$OUT/sanitizer.txt"
fi
timeout "${BENCH_TIMEOUT:-400}" python3 -m m3lite.bench prefill "$@" --json "$OUT/prefill.json" 2>&1 | tee "$OUT/bench.txt" | tail -40
