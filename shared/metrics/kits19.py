"""KiTS19 scoring, as the challenge ranks: kidney Dice (label > 0), tumour Dice (label == 2), and their mean.

Each Dice is computed per case and averaged over cases; the composite is the mean of the two averages (which is
also the average over cases of each case's mean). When prediction and reference of a region are both empty the
Dice is 1: the official KiTS19 code divides 0 by 0 there, we choose 1 (a correct "nothing") and document it; when
only one of them is empty the Dice is 0.

Files: predictions ``<pred_dir>/case_XXXXX.nii.gz`` (``.nii``, or with a suffix such as ``case_00000_seg.nii.gz``)
or ``<pred_dir>/case_XXXXX/<one file>.nii.gz``; references ``<ref_dir>/case_XXXXX/segmentation.nii.gz`` (a KiTS19
root; cases without a segmentation, the unlabelled test cases, are not scored). :func:`score_files` is the one
per-case scorer, used by ``evaluate_dir`` (``python -m shared evaluate``) and the msan_kits evaluation report.
The same Dice as a MONAI metric for evaluators is ``shared.metrics.dice_metric.KiTS19DiceMetric``.
"""

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.kits19 import CLASSES, LABEL, REGIONS
from shared.metrics.dice import region_dice
from shared.metrics.label_volumes import NIFTI_SUFFIX, index_files, load_label_pair, pair_cases
from shared.metrics.table import MetricTable

PREDICTION = re.compile(r"^(case_\d{5})(_[A-Za-z0-9]+)?\.nii(\.gz)?$")
EXPECTED_PREDICTIONS = "case_XXXXX.nii.gz or case_XXXXX/<prediction>.nii.gz"


def case_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """``{"kidney_dice", "tumour_dice", "mean_dice"}`` of one case's label maps (0 bg, 1 kidney, 2 tumour)."""
    scores = region_dice(pred, ref, REGIONS)
    kidney, tumour = scores["kidney"], scores["tumour"]
    return {"kidney_dice": kidney, "tumour_dice": tumour, "mean_dice": (kidney + tumour) / 2}


@dataclass
class CaseScores:
    """One case: its ``case_dice`` and the reference's voxels per region (kidney, tumour)."""

    dice: dict[str, float]
    reference_voxels: dict[str, int]


def score_case(pred: np.ndarray, ref: np.ndarray) -> CaseScores:
    """All KiTS19 scores of one case's label maps (0 bg, 1 kidney, 2 tumour)."""
    voxels = {name: int(np.count_nonzero(np.isin(ref, values))) for name, values in REGIONS.items()}
    return CaseScores(dice=case_dice(pred, ref), reference_voxels=voxels)


def score_files(pairs: Sequence[tuple[str, Path, Path]], title: str) -> tuple[MetricTable, list[CaseScores]]:
    """Score ``(case, prediction, reference)`` NIfTI pairs: the table (Dice per case, means over cases) and the
    scores of each case; a ValueError naming the file if a pair cannot be scored (see ``load_label_pair``)."""
    scores = []
    for _, pred_path, ref_path in pairs:
        pred, ref, _ = load_label_pair(pred_path, ref_path, num_labels=len(CLASSES))
        scores.append(score_case(pred, ref))
    rows = [{"case": case, **s.dice} for (case, _, _), s in zip(pairs, scores)]
    kidney = float(np.mean([r["kidney_dice"] for r in rows]))
    tumour = float(np.mean([r["tumour_dice"] for r in rows]))
    summary = {"cases": len(rows), "kidney_dice": kidney, "tumour_dice": tumour, "mean_dice": (kidney + tumour) / 2}
    return MetricTable(rows, summary, title=title), scores


def _prediction_case(path: Path, pred_dir: Path) -> str | None:
    if path.parent == pred_dir:
        match = PREDICTION.match(path.name)
        return match.group(1) if match else None
    return path.parent.name if NIFTI_SUFFIX.search(path.name) else None


def find_predictions(pred_dir: str | os.PathLike) -> dict[str, Path]:
    """``{case: prediction file}`` of ``pred_dir`` (file names: :data:`EXPECTED_PREDICTIONS`)."""
    pred_dir = Path(pred_dir)
    candidates = [*pred_dir.glob("case_*.nii*"), *pred_dir.glob("case_?????/*.nii*")]
    return index_files(candidates, lambda p: _prediction_case(p, pred_dir))


def evaluate_dir(
    pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, cases: Sequence[str] | None = None
) -> MetricTable:
    """Score every labelled case of the KiTS19 root ``ref_dir`` (only ``cases`` if given) against its prediction
    in ``pred_dir``."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: {what} folder not found")
    refs = {p.parent.name: p for p in sorted(ref_dir.glob(f"case_?????/{LABEL}"))}
    if not refs:
        raise ValueError(f"{ref_dir}: no case_XXXXX/{LABEL}; is it a KiTS19 root?")
    pairs = pair_cases(find_predictions(pred_dir), refs, pred_dir, EXPECTED_PREDICTIONS, cases)
    title = f"KiTS19: {pred_dir} vs {ref_dir} (Dice per case, mean over cases)"
    return score_files(pairs, title)[0]
