#!/usr/bin/env bash
# One prepared call on a lent GPU machine: the CUDA-only tests, the express evidence run
# (benchmarks/kvasir_protocol.py --preset express on Kvasir-SEG), then the hot-path benchmark in
# the time left. Everything that comes back is under $OUT (at most 8 files):
#   summary.md (steps, exit codes, seconds), express_summary.md/.json, generated.png, attacked.png,
#   cuda_tests.log, express.log, hot_paths.log (express_partial.log instead of a summary if stopped)
# Made for the device tool: after ../shared/device/make-kit, run with carry [".devkit"]:
#   source .devkit/on-device.sh && COMMIT=<sha> BUDGET=570 bash benchmarks/gpu_session.sh
# BUDGET: seconds this script may take in all (each step's timeout is cut to what is left).
set -u
OUT=${OUT:-out}; mkdir -p "$OUT"
S=$OUT/summary.md
t0=$(date +%s)
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - t0) - ${1:-0} )); }
step() {  # step NAME SECONDS_MAX LOG COMMAND...
  local name=$1 max=$2 log=$3; shift 3
  local t=$(left 5); [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 20 ]; then echo "| $name | skipped (no time left) | |" >> "$S"; return; fi
  local s=$(date +%s)
  timeout "$t" "$@" > "$log" 2>&1
  echo "| $name | rc=$? (timeout ${t}s) | $(( $(date +%s) - s )) s |" >> "$S"
}
{
  echo "# GPU session $(date -u +%FT%TZ), commit ${COMMIT:-unknown}"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
  echo
  echo "| step | result | wall |"
  echo "|---|---|---|"
} > "$S" 2>&1

step "CUDA tests" 150 "$OUT/cuda_tests.log" python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py
step "express run" "${EXPRESS_MAX:-560}" "$OUT/express.log" \
  python3 benchmarks/kvasir_protocol.py --preset express --data "${KVASIR320:-.devkit/kvasir320}" \
  --device cuda --out runs/express
[ -f runs/express/summary.md ] || step "express summary of what finished" 60 "$OUT/express_partial.log" \
  python3 benchmarks/kvasir_protocol.py --preset express --data "${KVASIR320:-.devkit/kvasir320}" \
  --device cuda --out runs/express --summary-only
cp runs/express/summary.md "$OUT/express_summary.md" 2>/dev/null
cp runs/express/summary.json "$OUT/express_summary.json" 2>/dev/null
cp runs/express/extra/generated/contact_sheet.png "$OUT/generated.png" 2>/dev/null
cp runs/express/extra/diff-pgd-w-unet-s0/contact_sheet.png "$OUT/attacked.png" 2>/dev/null
step "hot paths small 256" 300 "$OUT/hot_paths.log" \
  python3 benchmarks/hot_paths.py --size 256 --model-size small --batch 64 --device cuda \
  ${HOT_PATHS_ARGS:---samplers ddim:50 --repeats 1 --train-steps 10}
echo "total $(( $(date +%s) - t0 )) s" >> "$S"
