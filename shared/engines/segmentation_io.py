"""Inputs and outputs of the segmentation bundles' inference: checked CT volumes in, atomically written NIfTI out.

- :func:`volume_entries`: every CT volume of a folder (``.nii``, ``.nii.gz``, folders holding one DICOM series,
  found by :func:`shared.engines.detection_inferer.find_volumes`), each read once and checked to be 3D before
  anything is written, so a bad input stops the run with the file's name and leaves no output behind.
- :class:`AtomicNibabelWriter`: MONAI's ``NibabelWriter`` writing to a temporary name and renaming on success, for
  ``SaveImaged(writer=...)``: an interrupted run never leaves a half-written prediction.
"""

import re

from monai.data import NibabelWriter

from shared.data.atomic import atomic_path
from shared.engines.detection_inferer import find_volumes

__all__ = ["AtomicNibabelWriter", "volume_entries"]


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
