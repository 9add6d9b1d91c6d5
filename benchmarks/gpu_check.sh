#!/usr/bin/env bash
# The GPU checks in one command (< 6 min on one H200 and 16 cores): the tests marked gpu, then
# the figures of benchmarks/gpu_check.py. Figures go to $OUT/gpu_check.json when OUT is set.
# Each step has its own timeout, so that one hung step still leaves the others' output.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${OUT:-}
status=0
timeout 170 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -n 30 || status=1
timeout 170 "$PY" benchmarks/gpu_check.py ${out:+--json "$out/gpu_check.json"} "$@" || status=1
exit $status
