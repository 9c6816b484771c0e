#!/usr/bin/env bash
# The GPU checks of the trial step engine in one go (< 6 minutes on one H200): every part of
# benchmarks/bench_gpu.py in its own process with its own time limit, then one JSON report.
#
# Prepare once, on the development machine, from the repository root:
#     bash scripts/gpu/prepare.sh        # .whl/ (optuna wheels) and .data/ (Fashion-MNIST)
# Then, from a session whose task has a device machine, the device tool's call:
#     run(command="bash scripts/gpu_check.sh", carry=[".whl", ".data"], timeout_s=420)
# It writes $OUT/gpu_check.json (date, device, every part's numbers and pass/fail; commit it as
# benchmarks/results/gpu_check.json), $OUT/gpu_check.log and the memory calibrations
# $OUT/<device>-<precision>.json.
#
# Needs on that machine: python3 with torch (CUDA), timm, pandas, transformers, pyyaml (the
# machine's image has them). optuna (for the search part) comes from the carried .whl/; fvcore
# and ray are not needed. Without .whl the search part reports "skipped"; without .data the
# parts that train on Fashion-MNIST fail with the data error.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
PARTS_DIR=$(mktemp -d)
LOG="$OUT/gpu_check.log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
export CVT_NAS_DATA="$PWD/.data" CVT_NAS_CACHE="$PARTS_DIR/cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
# console script for the search part's `python -m cvt_nas.cli` needs nothing else

start=$(date +%s)
DEADLINE=${GPU_CHECK_DEADLINE_S:-340}  # leave time for the merge inside 6 minutes
# part:seconds (the order matters: memory calibrates before packing uses it)
for spec in env:30 steps:45 trial:60 search:85 cvt13:50 memory:40 packing:75 robust:70 cpu:60; do
  part=${spec%%:*}
  budget=${spec##*:}
  left=$(( DEADLINE - ($(date +%s) - start) ))
  if (( left < 15 )); then
    echo "== $part: skipped, ${left}s left of ${DEADLINE}s" | tee -a "$LOG"
    continue
  fi
  (( budget > left )) && budget=$left
  echo "== $part (limit ${budget}s)" | tee -a "$LOG"
  timeout -k 5 "$budget" "$PY" benchmarks/bench_gpu.py --part "$part" --out "$PARTS_DIR" \
    >> "$LOG" 2>&1
  rc=$?
  (( rc == 124 || rc == 137 )) && echo "== $part: TIMED OUT after ${budget}s" | tee -a "$LOG"
  (( rc != 0 && rc != 124 && rc != 137 )) && echo "== $part: exit $rc" | tee -a "$LOG"
done
"$PY" benchmarks/bench_gpu.py --merge "$PARTS_DIR" --out "$OUT/gpu_check.json" >> "$LOG" 2>&1
cp "$PARTS_DIR"/*-fp32.json "$PARTS_DIR"/*-bf16.json "$OUT"/ 2>/dev/null
"$PY" - "$OUT/gpu_check.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("device:", report.get("device"), "date:", report.get("date"))
for part, ok in report.get("summary", {}).items():
    print(f"{part:8s} {ok}")
PY
echo "total $(( $(date +%s) - start ))s; report: $OUT/gpu_check.json"
