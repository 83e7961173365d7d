"""Challenge metrics, computed exactly as the challenges score: LiTS, KiTS19 and DeepLesion (FROC).

Each dataset module exposes plain functions on arrays, an ignite/MONAI metric wrapper for evaluators, and
``evaluate_dir(pred_dir, ref_dir) -> MetricTable`` used by ``python -m shared evaluate``.
"""

import importlib
from types import ModuleType

from shared.data import DATASETS


def metrics_module(name: str) -> ModuleType:
    """Return ``shared.metrics.<name>`` for a supported dataset, or raise a ValueError naming the choices."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return importlib.import_module(f"shared.metrics.{key}")
