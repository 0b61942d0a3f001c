#!/usr/bin/env bash
# Usage: bash scripts/gpu_check.sh [--device cuda|cuda:N|cpu] [--only CHECK,...] [--work DIR]
#        bash scripts/gpu_check.sh --help
# Runs every GPU path of ncslim briefly and checks it, times pruned models and the paper's
# training runs, and prints one table and one JSON line (benchmarks/gpu_check.py; at most 8
# minutes on one GPU). Exit status 1 when a check fails.
# - Without a GPU (nvidia-smi lists none) and without --device: says so in one line, exits 0.
# - --device cpu runs the same checks at tiny sizes on the CPU (the CUDA-only ones skipped and
#   named); tests/test_gpu_check.py runs it.
# - A bad or unknown flag, or one without its value: one line on stderr, exit 2, checked
#   before any set-up. --help prints this text.
# - Python: $PYTHON if set, else the environment scripts/setup.sh sets up (and prints).
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '2,/^set -euo/p' scripts/gpu_check.sh | sed -e '$d' -e 's/^# \{0,1\}//'; }
fail() { echo "gpu_check: error: $1; see bash scripts/gpu_check.sh --help" >&2; exit 2; }
for arg in "$@"; do case $arg in -h|--help) usage; exit 0 ;; esac; done  # whatever else is given
device=
args=("$@")
i=0
while [ $i -lt ${#args[@]} ]; do  # every flag checked here, before any set-up or GPU probe
  arg=${args[$i]}
  case $arg in
    -h|--help) usage; exit 0 ;;
    --device=*|--only=*|--work=*) value=${arg#*=}; flag=${arg%%=*} ;;
    --device|--only|--work)
      flag=$arg
      i=$((i + 1))
      [ $i -lt ${#args[@]} ] || fail "$flag needs a value"
      value=${args[$i]} ;;
    *) fail "unknown argument '$arg' (flags: --device, --only, --work, --help)" ;;
  esac
  [ -n "$value" ] && [ "${value#--}" = "$value" ] || fail "$flag needs a value, got '$value'"
  case $flag=$value in  # the forms; the check names themselves are known to the Python side
    --device=cuda|--device=cpu|--device=cuda:[0-9]|--device=cuda:[0-9][0-9]) device=$value ;;
    --device=*) fail "--device '$value' is not a device; use cuda, cuda:N or cpu" ;;
    --only=*[!a-z0-9_,.-]*) fail "--only '$value' is not a comma-separated list of check names" ;;
  esac
  i=$((i + 1))
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
