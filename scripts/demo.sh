#!/usr/bin/env bash
# Set up (idempotent), then run the whole pipeline with the default `demo` preset:
# Fashion-MNIST, VGG-19 at 1/8 width, sparsity training -> pruning -> fine-tuning -> report.
# Extra arguments go to `ncslim run` (e.g. --penalty l1 --out runs/demo-l1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ncslim run --out "runs/demo-$(date +%Y%m%d-%H%M%S)" "$@"
