#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install requirements.txt into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -c "import torch, torchvision, monai; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'monai', monai.__version__)"
