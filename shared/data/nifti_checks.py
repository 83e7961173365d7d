"""Checks of NIfTI image/label pairs shared by the KiTS19 and LiTS validators: readable, 3D, same grid, classes.

Every reader failure (truncated gzip, short file, not NIfTI) becomes a message starting with the file's path;
nothing here raises on bad data. With a :class:`CheckCache`, files unchanged since they last passed are not re-read.
"""

from pathlib import Path

import nibabel as nib
import numpy as np

from shared.data.check_cache import CheckCache


def _read(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(data, affine, None) or (None, None, problem): reads the whole array, so truncation is found."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
        return data, image.affine, None
    except Exception as err:  # noqa: BLE001 - any reader failure is reported, never raised
        reason = f"{type(err).__name__}: {err}".strip()
        return None, None, f"{path}: unreadable NIfTI ({reason}); the file is truncated or corrupt: copy it again"


def _image_problems(path: Path, data: np.ndarray, affine: np.ndarray) -> list[str]:
    problems = []
    if data.ndim != 3:
        problems.append(f"{path}: image is not 3D (shape {data.shape}); expected one CT volume (x, y, z)")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        problems.append(f"{path}: invalid affine (singular or not finite); re-export the volume with its geometry")
    return problems


def check_image(path: Path, cache: CheckCache | None = None) -> list[str]:
    """Problems of a CT volume without label: unreadable, not 3D, singular affine."""
    key = cache.key(path, check="image") if cache is not None else None
    if cache is not None and key in cache:
        return []
    data, affine, problem = _read(path)
    problems = [problem] if problem else _image_problems(path, data, affine)
    if not problems and cache is not None:
        cache.add(key)
    return problems


def check_pair(
    image_path: Path,
    label_path: Path,
    classes: dict[int, str],
    dataset: str,
    cache: CheckCache | None = None,
    foreground: str | None = None,
) -> list[str]:
    """Problems of an image/label pair: each readable and 3D, same shape and affine, labels in ``classes``, and,
    if ``foreground`` names the organ every case of the dataset shows (kidney, liver), some voxel labelled > 0."""
    check = f"pair {sorted(classes)} foreground {foreground}"
    key = cache.key(image_path, label_path, check=check) if cache is not None else None
    if cache is not None and key in cache:
        return []
    problems = _pair_problems(image_path, label_path, classes, dataset, foreground)
    if not problems and cache is not None:
        cache.add(key)
    return problems


def _pair_problems(
    image_path: Path, label_path: Path, classes: dict[int, str], dataset: str, foreground: str | None
) -> list[str]:
    image_data, image_affine, problem = _read(image_path)
    problems = [problem] if problem else _image_problems(image_path, image_data, image_affine)
    label_data, label_affine, problem = _read(label_path)
    if problem:
        return [*problems, problem]
    if label_data.ndim != 3:
        return [*problems, f"{label_path}: label is not 3D (shape {label_data.shape}); expected one label volume"]
    names = ", ".join(f"{k} ({v})" for k, v in classes.items())
    outside = ~np.isin(label_data, list(classes))
    if outside.any():
        values = np.unique(label_data[outside])
        shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if values.size > 5 else "")
        problems.append(
            f"{label_path}: {int(outside.sum())} voxels have label values {shown} outside the {dataset} classes "
            f"{names}; fix the label map"
        )
    if foreground and not (label_data > 0).any():
        problems.append(
            f"{label_path}: no {foreground} voxels (the label map is all background), but every {dataset} case "
            f"shows the {foreground}; fix the label map or remove the case"
        )
    if image_data is None:
        return problems
    if image_data.shape != label_data.shape:
        problems.append(
            f"{label_path}: label shape {label_data.shape} differs from image {image_path.name} shape "
            f"{image_data.shape}; the label must be on the image's voxel grid"
        )
    elif not np.allclose(image_affine, label_affine, rtol=1e-4, atol=1e-3):
        problems.append(
            f"{label_path}: label affine differs from image {image_path.name} affine (max difference "
            f"{np.abs(image_affine - label_affine).max():.4g} mm); the label must be on the image's voxel grid"
        )
    return problems
