"""Validation entry points for bundles: :class:`DatasetError` and :func:`ensure_valid` (called in ``initialize``)."""

from pathlib import Path

from shared.errors import InputError


class DatasetError(InputError):
    """A dataset root that cannot be used: the message lists every problem with its file and what to do."""


def root_hint(dataset: str, root=None) -> str:
    """How to point a bundle at the real dataset or make a phantom one."""
    target = root or f"/tmp/{dataset}"
    return (
        f"point the bundle at the real dataset (--dataset_dir /path/to/{dataset}) or make phantoms "
        f"(`python -m shared phantoms {dataset} {target}`)"
    )


def root_problem(dataset: str, root, marker: str) -> str | None:
    """A message if ``root`` is unset, missing or not a folder (``marker``: a file the real root holds), else None."""
    if root is None or str(root) in ("", "None"):
        return f"no {dataset} dataset root given; {root_hint(dataset)}"
    path = Path(root)
    if not path.exists():
        return f"{path}: dataset root not found (a {dataset} root holds {marker}); {root_hint(dataset, path)}"
    if not path.is_dir():
        return f"{path}: not a folder (a {dataset} root holds {marker}); {root_hint(dataset, path)}"
    return None


def ensure_valid(dataset: str, root) -> None:
    """Raise :class:`DatasetError` naming the problem, or listing every one, of the ``dataset`` root ``root``.

    Return if the root is valid. A single problem is the whole message (one line, its file named).
    """
    from shared.data import dataset_module

    problems = dataset_module(dataset).validate(root)
    if len(problems) == 1:
        raise DatasetError(problems[0])
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DatasetError(f"{len(problems)} problem(s) in the {dataset} dataset root {root}:\n{lines}")
