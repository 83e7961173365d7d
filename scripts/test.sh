#!/usr/bin/env bash
# The project's test command: build the environments (.venv from requirements.txt; .venv-label, MONAI Label's own,
# from requirements-label.txt), lint, then run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` for the quick subset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_label_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
