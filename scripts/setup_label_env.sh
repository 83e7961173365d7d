#!/usr/bin/env bash
# Create (or reuse) the MONAI Label virtual environment .venv-label from requirements-label.txt (idempotent).
# Separate from .venv (scripts/setup_env.sh): monailabel 0.8.5 needs numpy<2 and pydicom<3. See docs/monailabel.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv-label/bin/python ]; then
  "$PYTHON" -m venv .venv-label
fi
.venv-label/bin/python -m pip install --quiet --upgrade pip
.venv-label/bin/python -m pip install --quiet -r requirements-label.txt
.venv-label/bin/python -c "import monailabel, monai, torch, numpy, pydicom; from monailabel.tasks.infer.bundle import BundleInferTask; print('monailabel', monailabel.__version__, 'monai', monai.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__, 'pydicom', pydicom.__version__)"
