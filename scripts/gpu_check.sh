#!/usr/bin/env bash
# The three bundles at the papers' sizes on a GPU, within 8 minutes: training step time with AMP off and on, peak GPU
# memory, images or volumes per second, whole-volume inference time of one 512 x 512 x 100 phantom volume.
#   bash scripts/gpu_check.sh [--device cuda|cpu] [--tiny] [--out FILE.json] [--budget SECONDS] [--plan]
# `--device cpu --tiny` is the CPU smoke run the tests use. Runs benchmarks/gpu_check.py in .venv (PYTHON= overrides
# the interpreter); every argument goes to it (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" benchmarks/gpu_check.py "$@"
