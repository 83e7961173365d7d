"""LiTS scoring, as the LiTS challenge and the VA paper (Wang et al. 2019, sec. 3.1 and Table 2) report it.

- Dice per case of the lesion (label == 2) and of the liver (label >= 1), averaged over cases ("Dice per case",
  the challenge ranking): both masks empty -> 1, only one empty -> 0, as the LiTS evaluation does.
- Global Dice: every case's voxels pooled, sum of 2|P∩G| over sum of |P|+|G|.
- Lesion Dice by lesion size (Dice_s, Dice_m, Dice_l of VA Table 2): small < 15 mm, medium 15-30 mm (both ends
  included, the paper's [15 mm, 30 mm]), large > 30 mm; see ``lesion_dices`` for the choices the paper leaves open.

Arrays are label maps in RAS (x, y, z) with z the axial (slice) axis, and ``spacing`` is (x, y, z) in mm.
Files: predictions ``<pred_dir>/volume-N.nii[.gz]`` or ``segmentation-N.nii[.gz]`` (a suffix such as ``_seg`` and
one sub-folder level, as MONAI's SaveImaged writes, are accepted); references ``<ref_dir>/segmentation-N.nii``.
:func:`score_files` is the one per-case scorer, used by ``evaluate_dir`` (``python -m shared evaluate``) and the
va_maskrcnn_lits evaluation report. The per-case Dice as a MONAI metric for evaluators is
``shared.metrics.dice_metric.LiTSDiceMetric``.
"""

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from shared.data.lits import CLASSES, FILE_NAME, REGIONS, case_name
from shared.metrics.dice import dice, dice_terms, pooled_dice
from shared.metrics.label_volumes import index_files, load_label_pair, pair_cases
from shared.metrics.table import MetricTable

SIZE_CLASSES = ("small", "medium", "large")
# Full 26-connectivity: lesions touching by a corner are one lesion.
CONNECTIVITY = ndimage.generate_binary_structure(3, 3)
PREDICTION = re.compile(r"^(?:volume|segmentation)-(\d+)(_[A-Za-z0-9]+)?\.nii(\.gz)?$")
EXPECTED_PREDICTIONS = "volume-N.nii[.gz] or segmentation-N.nii[.gz]"


def size_class(diameter_mm: float) -> str:
    """``"small"`` (< 15 mm), ``"medium"`` (15-30 mm inclusive) or ``"large"`` (> 30 mm), VA paper sec. 3.1."""
    if diameter_mm < 15:
        return "small"
    return "medium" if diameter_mm <= 30 else "large"


def longest_axial_diameter(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Longest in-plane extent (mm) of a 3D mask over its axial slices (RECIST-style long axis).

    Per slice, the maximum Feret diameter of the voxels' outline: the largest distance between two corners of
    the mask's pixels (pixels as squares of ``spacing[0] x spacing[1]`` mm), so one pixel measures its diagonal
    and an a x b pixel rectangle sqrt((a sx)^2 + (b sy)^2). The max over slices is the diameter.
    """
    best = 0.0
    sx, sy = spacing[0], spacing[1]
    for z in np.flatnonzero(mask.any(axis=(0, 1))):
        plane = mask[:, :, z]
        rows = np.flatnonzero(plane.any(axis=1))
        # The row-wise extreme pixels carry the convex hull: their 4 corners each are enough.
        lo = plane[rows].argmax(axis=1)
        hi = plane.shape[1] - 1 - plane[rows, ::-1].argmax(axis=1)
        corners = np.concatenate(
            [np.stack([rows + dx, cols + dy], axis=1) for dx in (-0.5, 0.5) for cols, dy in ((lo, -0.5), (hi, 0.5))]
        ) * np.array([sx, sy])
        hull = corners[ConvexHull(corners).vertices]
        best = max(best, float(pdist(hull).max()))
    return best


def lesion_dices(
    pred_lesion: np.ndarray, ref_lesion: np.ndarray, spacing: Sequence[float]
) -> list[tuple[float, float]]:
    """``(diameter_mm, dice)`` of every reference lesion (3D connected component, 26-connectivity).

    The VA paper does not define the diameter nor the per-lesion Dice; we choose the RECIST-style longest axial
    diameter (``longest_axial_diameter``) and Dice = 2|P∩G| / (|P|+|G|) with G the lesion and P the union of the
    predicted lesion components that overlap G (0 when none does): a prediction split in pieces, or spilling
    beyond the lesion, is judged whole, and predictions elsewhere do not lower this lesion's score.
    """
    ref_components, _ = ndimage.label(ref_lesion, structure=CONNECTIVITY)
    pred_components, _ = ndimage.label(pred_lesion, structure=CONNECTIVITY)
    pred_sizes = np.bincount(pred_components.ravel())
    results = []
    for index, box in enumerate(ndimage.find_objects(ref_components), start=1):
        lesion = ref_components[box] == index
        hits = np.unique(pred_components[box][lesion])
        hits = hits[hits > 0]
        overlap = int(np.count_nonzero(pred_components[box][lesion]))
        score = 2.0 * overlap / (int(pred_sizes[hits].sum()) + int(lesion.sum()))
        results.append((longest_axial_diameter(lesion, spacing), score))
    return results


def mean_dice_by_size(lesions: Iterable[tuple[float, float]]) -> dict[str, float]:
    """Mean per-lesion Dice of each size class from ``(diameter_mm, dice)`` pairs; NaN for a class without lesion."""
    by_class: dict[str, list[float]] = {name: [] for name in SIZE_CLASSES}
    for diameter, score in lesions:
        by_class[size_class(diameter)].append(score)
    return {name: float(np.mean(scores)) if scores else math.nan for name, scores in by_class.items()}


@dataclass
class CaseScores:
    """One case: Dice per region, the Dice terms for the global Dice, its lesions' (diameter_mm, dice) and the
    reference's voxels per region."""

    dice: dict[str, float]
    terms: dict[str, tuple[int, int]]
    lesions: list[tuple[float, float]] = field(default_factory=list)
    reference_voxels: dict[str, int] = field(default_factory=dict)


def score_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> CaseScores:
    """All LiTS scores of one case's label maps (0 bg, 1 liver, 2 lesion) in RAS with ``spacing`` (x, y, z) mm."""
    masks = {name: (np.isin(pred, values), np.isin(ref, values)) for name, values in REGIONS.items()}
    return CaseScores(
        dice={name: dice(p, g) for name, (p, g) in masks.items()},
        terms={name: dice_terms(p, g) for name, (p, g) in masks.items()},
        lesions=lesion_dices(*masks["lesion"], spacing),
        reference_voxels={name: int(np.count_nonzero(g)) for name, (_, g) in masks.items()},
    )


def summarize(cases: Sequence[CaseScores]) -> dict[str, float | int]:
    """Dice per case (mean over cases), global Dice, and lesion Dice per size class over all cases' lesions."""
    summary: dict[str, float | int] = {"cases": len(cases)}
    for name in REGIONS:
        summary[f"{name}_dice_per_case"] = float(np.mean([c.dice[name] for c in cases]))
        summary[f"{name}_dice_global"] = pooled_dice(c.terms[name] for c in cases)
    lesions = [lesion for c in cases for lesion in c.lesions]
    for name, value in mean_dice_by_size(lesions).items():
        summary[f"lesion_dice_{name}"] = value
    for name in SIZE_CLASSES:
        summary[f"lesions_{name}"] = sum(size_class(d) == name for d, _ in lesions)
    return summary


def score_files(pairs: Sequence[tuple[str, Path, Path]], title: str) -> tuple[MetricTable, list[CaseScores]]:
    """Score ``(case, prediction, reference)`` NIfTI pairs: the table (per case: Dice, lesions per size class;
    summary: ``summarize``) and the scores of each case; a ValueError naming the file if a pair cannot be scored."""
    scores = []
    for _, pred_path, ref_path in pairs:
        pred, ref, spacing = load_label_pair(pred_path, ref_path, num_labels=len(CLASSES))
        scores.append(score_case(pred, ref, spacing))
    rows = []
    for (case, _, _), case_scores in zip(pairs, scores):
        sizes = [size_class(d) for d, _ in case_scores.lesions]
        rows.append(
            {
                "case": case,
                "lesion_dice": case_scores.dice["lesion"],
                "liver_dice": case_scores.dice["liver"],
                **{f"lesions_{name}": sizes.count(name) for name in SIZE_CLASSES},
            }
        )
    return MetricTable(rows, summarize(scores), title=title), scores


def _prediction_case(path: Path) -> str | None:
    match = PREDICTION.match(path.name)
    return case_name(int(match.group(1))) if match else None


def _reference_case(path: Path) -> str | None:
    match = FILE_NAME.fullmatch(path.name)
    return case_name(int(match.group(2))) if match and match.group(1) == "segmentation" else None


def find_predictions(pred_dir: str | os.PathLike) -> dict[str, Path]:
    """``{case: prediction file}`` of ``pred_dir`` and its sub-folders (file names: :data:`EXPECTED_PREDICTIONS`)."""
    pred_dir = Path(pred_dir)
    return index_files([*pred_dir.glob("*.nii*"), *pred_dir.glob("*/*.nii*")], _prediction_case)


def evaluate_dir(
    pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, cases: Sequence[str] | None = None
) -> MetricTable:
    """Score every ``segmentation-N.nii`` of ``ref_dir`` (only the ``cases`` ``volume-N`` if given) against its
    prediction in ``pred_dir``."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: {what} folder not found")
    refs = index_files(list(ref_dir.glob("segmentation-*.nii*")), _reference_case)
    if not refs:
        raise ValueError(f"{ref_dir}: no segmentation-N.nii; is it a LiTS root?")
    pairs = pair_cases(find_predictions(pred_dir), refs, pred_dir, EXPECTED_PREDICTIONS, cases)
    return score_files(pairs, title=f"LiTS: {pred_dir} vs {ref_dir}")[0]
