#!/usr/bin/env bash
# The project's test command: build .venv (requirements.txt), lint, then run the suite. MONAI Label's own
# environment .venv-label (requirements-label.txt) is built only when the selected tests include
# tests/test_monailabel*.py (all slow or load), so the quick subset `bash scripts/test.sh -m "not slow"` does not build it.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check .
.venv/bin/ruff format --check .
selected=$(.venv/bin/python -m pytest --collect-only -q -p no:cacheprovider "$@" 2>/dev/null || true)
if grep -q '^tests/test_monailabel[a-z_]*.py[:]' <<<"$selected"; then
  bash scripts/setup_label_env.sh
fi
.venv/bin/python -m pytest "$@"
