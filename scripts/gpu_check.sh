#!/usr/bin/env bash
# Usage: bash scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--only CHECK,...] [--work DIR]
# Runs every GPU path of ncslim briefly and checks it, times pruned models and the paper's
# training runs, and prints one table and one JSON line (benchmarks/gpu_check.py; at most 8
# minutes on one GPU). Exit status 1 when a check fails.
# - Without a GPU (nvidia-smi lists none) and without --device: says so in one line, exits 0.
# - --device cpu runs the same checks at tiny sizes on the CPU (the CUDA-only ones skipped and
#   named); tests/test_gpu_check.py runs it.
# - Python: $PYTHON if set, else the environment scripts/setup.sh sets up (and prints).
set -euo pipefail
cd "$(dirname "$0")/.."
device=
previous=
for arg in "$@"; do
  case $arg in
    --device=*) device=${arg#--device=} ;;
    *) [ "$previous" = --device ] && device=$arg ;;
  esac
  previous=$arg
done
if [ -z "$device" ] && ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }; then
  echo "gpu_check: no GPU here (nvidia-smi lists none), nothing to check; bash scripts/gpu_check.sh --device cpu runs the checks at tiny sizes on the CPU"
  exit 0
fi
python=${PYTHON:-}
if [ -z "$python" ]; then
  python="$(bash scripts/setup.sh)/python"
fi
export PYTHONPATH="$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/gpu_check.py "$@"
