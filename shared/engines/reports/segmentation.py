"""The evaluation reports of a datalist split (evaluate.json): per-case table, summary, CSV and an overlay PNG.

evaluate.json writes one prediction per case in the image's own space (``<pred_dir>/case_XXXXX/imaging_seg.nii.gz``
for KiTS19, ``<pred_dir>/volume-N_seg.nii.gz`` for LiTS). Both reports score them with the dataset's one per-case
scorer, the one ``python -m shared evaluate`` uses (``shared.metrics.kits19.score_files``: kidney = labels 1+2,
tumour = 2; ``shared.metrics.lits.score_files``: lesion and liver Dice per case, global Dice, lesion Dice by size),
and draw the case with the most tumour/lesion voxels.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.data import kits19 as kits19_data
from shared.data import lits as lits_data
from shared.data.atomic import atomic_path
from shared.metrics import kits19, lits
from shared.metrics.label_volumes import pair_cases
from shared.metrics.table import MetricTable
from shared.visualize import save_overlay_png_from_files

__all__ = ["write_kits19_report", "write_lits_report"]


def write_kits19_report(
    pred_dir: str, entries: Sequence[dict], out_dir: str, hu_window: Sequence[float] = (-200, 500)
) -> MetricTable:
    """Score the predictions of ``entries`` (datalist items with ``image``, ``label``, ``case``), print the table,
    write it as ``kits19_metrics.csv`` and ``kits19_metrics.txt`` and draw ``overlay.png`` in ``out_dir``; return
    the ``MetricTable``."""
    pairs = _pairs(kits19.find_predictions(pred_dir), entries, pred_dir, kits19.EXPECTED_PREDICTIONS)
    title = f"KiTS19 evaluation of {pred_dir} (Dice per case, mean over cases)"
    table, scores = kits19.score_files(pairs, title)
    print(table.to_text())
    out = Path(out_dir)
    table.write_csv(out / "kits19_metrics.csv")
    with atomic_path(out / "kits19_metrics.txt") as tmp:
        tmp.write_text(table.to_text() + "\n")
    voxels = [s.reference_voxels["tumour"] for s in scores]
    _draw_largest(pairs, entries, voxels, out, hu_window, kits19_data.CLASSES, "MSAN")
    return table


def write_lits_report(
    pred_dir: str, entries: Sequence[dict], out_dir: str, hu_window: Sequence[float] = (-200, 300)
) -> MetricTable:
    """Score the LiTS predictions of ``entries`` (datalist items with ``image``, ``label``, ``case``), print the table,
    write ``lits_metrics.csv`` and draw ``overlay.png`` in ``out_dir``; return the ``MetricTable``."""
    pairs = _pairs(lits.find_predictions(pred_dir), entries, pred_dir, lits.EXPECTED_PREDICTIONS)
    table, scores = lits.score_files(pairs, f"LiTS evaluation of {pred_dir} (lesion Dice by size: Table 2)")
    print(table.to_text())
    table.write_csv(Path(out_dir) / "lits_metrics.csv")
    voxels = [s.reference_voxels["lesion"] for s in scores]
    _draw_largest(pairs, entries, voxels, Path(out_dir), hu_window, lits_data.CLASSES, "VA Mask R-CNN")
    return table


def _pairs(preds: dict[str, Path], entries: Sequence[dict], pred_dir: str, expected: str) -> list[tuple]:
    """``(case, prediction, reference)`` of every entry; a ValueError if none or if a prediction is missing."""
    if not entries:
        raise ValueError("no case to evaluate: the datalist split is empty")
    return pair_cases(preds, {e["case"]: Path(e["label"]) for e in entries}, pred_dir, expected)


def _draw_largest(
    pairs: Sequence[tuple],
    entries: Sequence[dict],
    voxels: Sequence[int],
    out: Path,
    hu_window: Sequence[float],
    class_names: dict[int, str],
    network: str,
) -> None:
    """``out/overlay.png``: reference and prediction of the case with the most ``voxels`` (tumour or lesion)."""
    case, pred_path, label_path = pairs[int(np.argmax(voxels))]
    image = next(e["image"] for e in entries if e["case"] == case)
    save_overlay_png_from_files(
        image,
        label_path,
        pred_path,
        out / "overlay.png",
        window=tuple(hu_window),
        class_names=class_names,
        title=f"{case}: reference (left), {network} (right)",
    )
