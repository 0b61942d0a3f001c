#!/usr/bin/env bash
# Set up with the test tools (idempotent: see scripts/setup.sh), then run the lint and the whole
# test suite with the Python of the environment setup.sh chose (an active venv/conda env, or
# .venv/). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(bash scripts/setup.sh --dev)
export PATH="$bin:$PATH"
"$bin/python" -m ruff check .
exec "$bin/python" -m pytest -q "$@"
