"""Volume input and output of every bundle: finding and loading CT volumes, checked inputs, atomic NIfTI writers.

- :func:`volume_entries`: every CT volume of a folder (``.nii``, ``.nii.gz``, folders holding one DICOM series,
  found by :func:`find_volumes`), each read once and checked (3D, finite values, invertible affine) before
  anything is written, so a bad input stops the run with the file's name and leaves no output behind.
- :func:`writable_output_dir`: the output folder, created and probed with a test file before the first volume is
  inferred; :func:`writing_to` turns a failed write (disk full, permissions) into one line naming the folder.
- :class:`AtomicNibabelWriter`: MONAI's ``NibabelWriter`` writing to a temporary name and renaming on success, for
  ``SaveImaged(writer=...)``: an interrupted run never leaves a half-written prediction.
"""

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import NibabelWriter

from shared.data.atomic import atomic_path
from shared.errors import InputError

__all__ = [
    "VOLUME_SUFFIXES",
    "AtomicNibabelWriter",
    "find_volumes",
    "load_volume",
    "volume_entries",
    "volume_name",
    "writable_output_dir",
    "writing_to",
]

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
        raise InputError(f"dataset_dir {root} does not exist: give a folder of .nii/.nii.gz or DICOM folders")
    found = [p for p in sorted(root.iterdir()) if p.is_file() and p.name.endswith(VOLUME_SUFFIXES)]
    found += [
        p for p in sorted(root.iterdir()) if p.is_dir() and any(_is_dicom_file(f) for f in p.iterdir() if f.is_file())
    ]
    if not found:
        raise InputError(f"{root}: no .nii, .nii.gz or DICOM series folder found; give the folder of the CT volumes")
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
        raise InputError(f"{path}: expected a 3D CT volume, got an array of shape {array.shape}")
    return array, np.asarray(image.affine, dtype=np.float64)


def _affine_problem(path: Path, affine: np.ndarray) -> str | None:
    """Why ``affine`` (or, for NIfTI, the file's own affine, which MONAI silently replaces when it is NaN) cannot
    map voxels to millimetres, or None."""
    affines = [np.asarray(affine, dtype=np.float64)]
    if path.is_file():
        affines.append(np.asarray(nib.load(path).affine, dtype=np.float64))
    for matrix in affines:
        if not np.isfinite(matrix).all():
            return "its affine holds NaN or infinite values"
        if np.linalg.matrix_rank(matrix[:3, :3]) < 3:
            return "its affine is not invertible (a zero voxel size or collinear axes)"
    return None


def volume_entries(dataset_dir: str) -> list[dict]:
    """``[{"image": path, "case": name}]`` for every volume of ``dataset_dir``; an :class:`InputError` naming every
    input that cannot be used: unreadable (corrupt or truncated file, empty DICOM folder), not 3D, NaN or infinite
    voxels, an affine that is not invertible."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    entries, problems = [], []
    for path in find_volumes(dataset_dir):
        try:
            image = load(str(path))
            affine_problem = _affine_problem(path, image.affine)
        except Exception as err:  # the readers raise many types; all mean "unreadable"
            problems.append(f"{path}: cannot be read ({type(err).__name__}: {err}); re-export or remove it")
            continue
        shape = tuple(image.shape)
        if len(shape) != 3 or min(shape) < 2:
            problems.append(f"{path}: not a 3D volume (shape {shape}); give one CT volume per file or DICOM folder")
        elif not bool(torch.isfinite(torch.as_tensor(image)).all()):
            problems.append(f"{path}: holds NaN or infinite voxel values; re-export it with finite HU values")
        elif affine_problem:
            problems.append(f"{path}: {affine_problem}; re-export it with the scanner's orientation and spacing")
        else:
            entries.append({"image": str(path), "case": re.sub(r"\.nii(\.gz)?$", "", path.name)})
    if problems:
        raise InputError(
            f"{len(problems)} unusable input(s) in {dataset_dir}, nothing written:\n  " + "\n  ".join(problems)
        )
    return entries


@contextmanager
def writing_to(folder: str | Path) -> Iterator[None]:
    """Run the block; an ``OSError`` in it (disk full, no permission) becomes an :class:`InputError` naming
    ``folder``."""
    try:
        yield
    except OSError as err:
        raise InputError(
            f"{folder}: cannot write the output there ({err.strerror or err}); free disk space or give a writable"
            " --output_dir, then run again"
        ) from err


def writable_output_dir(output_dir: str | Path) -> Path:
    """``output_dir``, created if needed and probed with a temporary file, so that an unwritable folder stops the run
    (:class:`InputError` naming it) before the first volume is inferred."""
    folder = Path(output_dir)
    with writing_to(folder):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    return folder


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` whose ``write`` goes to a temporary file beside the target, renamed into place on success;
    a failed write leaves no file and stops with one line naming the folder (:func:`writing_to`)."""

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        with writing_to(Path(filename).parent), atomic_path(filename) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)
