"""Reading predicted and reference label volumes for scoring: pairing files by case, RAS reorientation, grid checks.

Array order on disk is never trusted: both volumes are reoriented to RAS by their affines (nibabel
``as_closest_canonical``), then must have the same shape and the same affine (within ``affine_atol`` mm).
"""

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$")


def load_ras(path: str | os.PathLike) -> nib.Nifti1Image:
    """The NIfTI at ``path`` reoriented to RAS, trailing singleton axes dropped; ValueError naming the file if
    it cannot be read or is not 3D."""
    try:
        img = nib.squeeze_image(nib.load(path))
        if img.ndim == 3:
            img = nib.as_closest_canonical(img)
    except Exception as err:
        raise ValueError(f"{path}: cannot read it as NIfTI ({err}); is the file complete?") from err
    if img.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {img.shape}")
    return img


def voxels(img: nib.Nifti1Image, path: str | os.PathLike) -> np.ndarray:
    """The voxel array of ``img`` (scaled as stored); ValueError naming ``path`` if the data cannot be read."""
    try:
        return np.asanyarray(img.dataobj)
    except Exception as err:
        raise ValueError(f"{path}: cannot read its voxels ({err}); is the file complete?") from err


def label_array(img: nib.Nifti1Image, path: str | os.PathLike, num_labels: int | None) -> np.ndarray:
    """The voxels of a label volume as int16, checked to be whole numbers in ``0 .. num_labels - 1`` (any
    non-negative integer if ``num_labels`` is None)."""
    data = voxels(img, path)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: holds non-integer values; expected a label map, not probabilities")
    top = np.iinfo(np.int16).max if num_labels is None else num_labels - 1
    if data.size and (data.min() < 0 or data.max() > top):
        raise ValueError(
            f"{path}: label values range {data.min()}..{data.max()}, expected 0..{top} "
            "(0 background and the dataset's classes)"
        )
    return data.astype(np.int16)


def check_same_grid(
    img: nib.Nifti1Image,
    path: str | os.PathLike,
    ref_img: nib.Nifti1Image,
    ref_path: str | os.PathLike,
    affine_atol: float = 1e-3,
) -> None:
    """ValueError naming both files unless the two RAS volumes have the same shape and affines within
    ``affine_atol`` (mm)."""
    if img.shape != ref_img.shape:
        raise ValueError(
            f"{path}: shape {img.shape} (RAS) differs from the reference {ref_path} {ref_img.shape}; "
            "it must be on the reference's grid (invert any resampling, e.g. MONAI Invertd)"
        )
    diff = float(np.max(np.abs(img.affine - ref_img.affine)))
    if diff > affine_atol:
        raise ValueError(
            f"{path}: affine differs from the reference {ref_path} by {diff:.4g} mm (> {affine_atol}); "
            f"this one (RAS):\n{np.round(img.affine, 4)}\nreference (RAS):\n{np.round(ref_img.affine, 4)}\n"
            "save it with the reference's affine (e.g. SaveImaged with the image's metadata)"
        )


def load_label_pair(
    pred_path: str | os.PathLike, ref_path: str | os.PathLike, num_labels: int | None = 3, affine_atol: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Prediction and reference label arrays in RAS on the same grid, and the voxel spacing (x, y, z) in mm.

    Raises a ValueError naming the files when one is unreadable, shapes differ, the affines differ by more than
    ``affine_atol`` or a value is not a label in ``0 .. num_labels - 1`` (any non-negative integer if None).
    """
    pred_img, ref_img = load_ras(pred_path), load_ras(ref_path)
    check_same_grid(pred_img, pred_path, ref_img, ref_path, affine_atol)
    spacing = tuple(float(s) for s in ref_img.header.get_zooms()[:3])
    return label_array(pred_img, pred_path, num_labels), label_array(ref_img, ref_path, num_labels), spacing


def index_files(paths: Sequence[Path], case_of: Callable[[Path], str | None]) -> dict[str, Path]:
    """``{case: path}`` of the paths whose case ``case_of`` recognises; ValueError naming both files of a case
    found twice."""
    found: dict[str, Path] = {}
    for path in sorted(paths):
        case = case_of(path)
        if case is None:
            continue
        if case in found:
            raise ValueError(f"two files for {case}: {found[case]} and {path}; keep one of them")
        found[case] = path
    return found


def pair_cases(
    preds: dict[str, Path],
    refs: dict[str, Path],
    pred_dir: str | os.PathLike,
    expected: str,
    cases: Sequence[str] | None = None,
) -> list[tuple[str, Path, Path]]:
    """``(case, prediction, reference)`` for every reference case (only ``cases`` if given), sorted; a ValueError
    listing the cases without reference or without prediction (``expected`` describes the file names looked for)."""
    if cases is not None:
        unknown = sorted(set(cases) - set(refs))
        if unknown:
            raise ValueError(f"no reference label for {_shown(unknown)}")
        refs = {case: refs[case] for case in cases}
    if not refs:
        raise ValueError("no reference label found")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise ValueError(
            f"{pred_dir}: no prediction for {len(missing)} of {len(refs)} reference cases ({_shown(missing)}); "
            f"expected {expected}"
        )
    return [(case, preds[case], refs[case]) for case in sorted(refs, key=_natural_key)]


def _shown(cases: list[str]) -> str:
    """The first 10 cases, then how many more."""
    return ", ".join(cases[:10]) + (f" and {len(cases) - 10} more" if len(cases) > 10 else "")


def _natural_key(name: str) -> list[int | str]:
    """Sort key putting ``volume-2`` before ``volume-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
