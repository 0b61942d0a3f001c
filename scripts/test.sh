#!/usr/bin/env bash
# Set up (idempotent), then run the lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m ruff check .
python -m pytest -q "$@"
