#!/usr/bin/env bash
# One call on a GPU machine: the kernel tests compiled, compute-sanitizer over every kernel, then a
# benchmark. Usage: scripts/gpu_run.sh {prefill|decode} [benchmark options]; results go to $OUT.
# Environment: SKIP_TESTS=1, TESTS (pytest paths), BENCH_TIMEOUT (seconds).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/m3lite-gpu}
BENCH=${1:-prefill}
shift || true
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_kernels.py tests/test_decode.py \
    tests/test_cache.py} > "$OUT/tests.txt" 2>&1
  tail -3 "$OUT/tests.txt"
  timeout 120 compute-sanitizer --tool memcheck python3 -m m3lite.kernels.smoke > "$OUT/sanitizer.txt" 2>&1
  tail -10 "$OUT/sanitizer.txt"
fi
timeout "${BENCH_TIMEOUT:-400}" python3 -m m3lite.bench "$BENCH" "$@" --json "$OUT/$BENCH.json" 2>&1 \
  | tee "$OUT/bench-$BENCH.txt" | tail -60
