#!/usr/bin/env bash
# Set up (idempotent: see scripts/setup.sh), then run the whole pipeline with the default `demo`
# preset: Fashion-MNIST, VGG-19 at 1/8 width, sparsity training -> pruning -> fine-tuning ->
# report, with the ncslim of the environment setup.sh chose (an active venv/conda env, or .venv/).
# Extra arguments go to `ncslim run` (e.g. --penalty l1 --out runs/demo-l1).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(bash scripts/setup.sh)
export PATH="$bin:$PATH"
exec "$bin/ncslim" run --out "runs/demo-$(date +%Y%m%d-%H%M%S)" "$@"
