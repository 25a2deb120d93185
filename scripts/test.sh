#!/usr/bin/env bash
# Set up and run the whole test suite (the same command CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q "$@"
