"""Volume input and output of every bundle: finding and loading CT volumes, checked inputs, atomic NIfTI writers.

- :func:`volume_entries`: every CT volume of a folder (``.nii``, ``.nii.gz``, folders holding one DICOM series,
  found by :func:`find_volumes`), each read once and checked to be 3D before
  anything is written, so a bad input stops the run with the file's name and leaves no output behind.
- :class:`AtomicNibabelWriter`: MONAI's ``NibabelWriter`` writing to a temporary name and renaming on success, for
  ``SaveImaged(writer=...)``: an interrupted run never leaves a half-written prediction.
"""

import re
from pathlib import Path

import numpy as np
from monai.data import NibabelWriter

from shared.data.atomic import atomic_path

__all__ = ["VOLUME_SUFFIXES", "AtomicNibabelWriter", "find_volumes", "load_volume", "volume_entries", "volume_name"]

VOLUME_SUFFIXES = (".nii", ".nii.gz")


def _is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file ("DICM" after the 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def find_volumes(dataset_dir: str | Path) -> list[Path]:
    """CT volumes under ``dataset_dir``: ``.nii``/``.nii.gz`` files and folders holding a DICOM series."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {root} does not exist: give a folder of .nii/.nii.gz or DICOM folders")
    found = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(VOLUME_SUFFIXES)]
    found += [
        p for p in sorted(root.iterdir()) if p.is_dir() and any(_is_dicom_file(f) for f in p.iterdir() if f.is_file())
    ]
    if not found:
        raise FileNotFoundError(f"{root}: no .nii, .nii.gz or DICOM series folder found")
    return found


def volume_name(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """HU array and its RAS affine (MONAI ``LoadImage``: NIfTI via nibabel, DICOM series via ITK)."""
    from monai.transforms import LoadImage

    image = LoadImage(image_only=True)(str(path))
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D CT volume, got an array of shape {array.shape}")
    return array, np.asarray(image.affine, dtype=np.float64)


def volume_entries(dataset_dir: str) -> list[dict]:
    """``[{"image": path, "case": name}]`` for every volume of ``dataset_dir``; a ValueError naming every input
    that cannot be read as one 3D volume (corrupt or truncated file, empty DICOM folder, 2D image)."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    entries, problems = [], []
    for path in find_volumes(dataset_dir):
        try:
            shape = tuple(load(str(path)).shape)
        except Exception as err:  # the readers raise many types; all mean "unreadable"
            problems.append(f"{path}: cannot be read ({type(err).__name__}: {err}); re-export or remove it")
            continue
        if len(shape) != 3 or min(shape) < 2:
            problems.append(f"{path}: not a 3D volume (shape {shape}); give one CT volume per file or DICOM folder")
            continue
        entries.append({"image": str(path), "case": re.sub(r"\.nii(\.gz)?$", "", path.name)})
    if problems:
        raise ValueError(
            f"{len(problems)} unusable input(s) in {dataset_dir}, nothing written:\n  " + "\n  ".join(problems)
        )
    return entries


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` whose ``write`` goes to a temporary file beside the target, renamed into place on success."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with atomic_path(filename) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)
