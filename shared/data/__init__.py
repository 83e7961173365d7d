"""Dataset layouts (KiTS19, LiTS, DeepLesion): datalists, validation of a dataset root, phantom generators.

Every dataset module exposes the same three functions, so the CLI and the bundles treat them alike:

- ``make_phantoms(out_dir, num_cases=..., seed=0, **size) -> Path``: write a phantom dataset in the official layout.
- ``validate(root) -> list[str]``: every problem found under ``root``, one actionable message each (empty: valid).
- ``make_datalist(root, seed=0, **split) -> dict``: MONAI datalist with ``training``, ``validation``, ``test`` lists.
"""

import importlib
from types import ModuleType

DATASETS = ("kits19", "lits", "deeplesion")


def dataset_module(name: str) -> ModuleType:
    """Return the module ``shared.data.<name>`` of a supported dataset, or raise a ValueError naming the choices."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return importlib.import_module(f"shared.data.{key}")
