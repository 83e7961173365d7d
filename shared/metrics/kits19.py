"""KiTS19 scoring, as the challenge ranks: kidney Dice (label > 0), tumour Dice (label == 2), and their mean.

Each Dice is computed per case and averaged over cases; the composite is the mean of the two averages (which is
also the average over cases of each case's mean). When prediction and reference of a region are both empty the
Dice is 1: the official KiTS19 code divides 0 by 0 there, we choose 1 (a correct "nothing") and document it; when
only one of them is empty the Dice is 0.

Files: predictions ``<pred_dir>/case_XXXXX.nii.gz`` (``.nii``, or with a suffix such as ``case_00000_seg.nii.gz``)
or ``<pred_dir>/case_XXXXX/<one file>.nii.gz``; references ``<ref_dir>/case_XXXXX/segmentation.nii.gz`` (a KiTS19
root; cases without a segmentation, the unlabelled test cases, are not scored).

``KiTS19DiceMetric`` (same Dice as a MONAI metric for evaluators) is importable from here; it lives in
``shared.metrics.dice_metric``.
"""

import os
import re
from pathlib import Path

import numpy as np

from shared.metrics.dice import region_dice
from shared.metrics.label_volumes import NIFTI_SUFFIX, index_files, load_label_pair, pair_cases
from shared.metrics.table import MetricTable

REGIONS = {"kidney": (1, 2), "tumour": (2,)}
CASE = re.compile(r"^(case_\d{5})(_[A-Za-z0-9]+)?\.nii(\.gz)?$")


def case_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """``{"kidney_dice", "tumour_dice", "mean_dice"}`` of one case's label maps (0 bg, 1 kidney, 2 tumour)."""
    scores = region_dice(pred, ref, REGIONS)
    kidney, tumour = scores["kidney"], scores["tumour"]
    return {"kidney_dice": kidney, "tumour_dice": tumour, "mean_dice": (kidney + tumour) / 2}


def _prediction_case(path: Path, pred_dir: Path) -> str | None:
    if path.parent == pred_dir:
        match = CASE.match(path.name)
        return match.group(1) if match else None
    return path.parent.name if NIFTI_SUFFIX.search(path.name) else None


def evaluate_dir(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> MetricTable:
    """Score every labelled case of the KiTS19 root ``ref_dir`` against its prediction in ``pred_dir``."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: {what} folder not found")
    refs = {p.parent.name: p for p in sorted(ref_dir.glob("case_?????/segmentation.nii.gz"))}
    if not refs:
        raise ValueError(f"{ref_dir}: no case_XXXXX/segmentation.nii.gz; is it a KiTS19 root?")
    candidates = [*pred_dir.glob("case_*.nii*"), *pred_dir.glob("case_?????/*.nii*")]
    preds = index_files(candidates, lambda p: _prediction_case(p, pred_dir))
    expected = "case_XXXXX.nii.gz or case_XXXXX/<prediction>.nii.gz"
    rows = []
    for case, pred_path, ref_path in pair_cases(preds, refs, pred_dir, expected):
        pred, ref, _ = load_label_pair(pred_path, ref_path, num_labels=3)
        rows.append({"case": case, **case_dice(pred, ref)})
    kidney = float(np.mean([r["kidney_dice"] for r in rows]))
    tumour = float(np.mean([r["tumour_dice"] for r in rows]))
    summary = {"cases": len(rows), "kidney_dice": kidney, "tumour_dice": tumour, "mean_dice": (kidney + tumour) / 2}
    return MetricTable(rows, summary, title=f"KiTS19: {pred_dir} vs {ref_dir} (Dice per case, mean over cases)")


def __getattr__(name: str):
    """PEP 562: ``KiTS19DiceMetric`` imports MONAI (slow) only when asked for; see ``shared.metrics.dice_metric``."""
    if name == "KiTS19DiceMetric":
        from shared.metrics.dice_metric import KiTS19DiceMetric

        return KiTS19DiceMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
