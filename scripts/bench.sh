#!/usr/bin/env bash
# The benchmark suite (benchmarks/__main__.py) in .venv: one table of measured ratios, their goals and limits.
#   bash scripts/bench.sh [--quick] [--max_load 1.0] [--out outputs/benchmarks] [--only NAME ...]
# Builds nothing (scripts/setup_env.sh builds .venv); every argument goes to `python -m benchmarks`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m benchmarks "$@"
