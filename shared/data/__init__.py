"""Dataset layouts (KiTS19, LiTS, DeepLesion): each dataset's facts, validation of a root, datalists.

Every dataset module holds its facts (classes and label values, scored regions, file layout, split codes, HU offset,
lesion types), imported by the phantoms, transforms, metrics and reports, and exposes the same two functions, so the
CLI and the bundles treat them alike:

- ``validate(root) -> list[str]``: every problem found under ``root``, one actionable message each (empty: valid).
- ``make_datalist(root, **split) -> dict``: MONAI datalist with ``training``, ``validation``, ``test`` lists.
"""

import importlib
from types import ModuleType

DATASETS = ("kits19", "lits", "deeplesion")


def dataset_module(name: str, package: str = "shared.data") -> ModuleType:
    """The module of a supported dataset in ``package`` (one module per dataset: ``shared.data``,
    ``shared.phantoms``, ``shared.metrics``), or a ValueError naming the choices."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return importlib.import_module(f"{package}.{key}")
