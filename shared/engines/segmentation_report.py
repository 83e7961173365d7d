"""The KiTS19 evaluation report of a datalist split: per-case Dice table, CSV and an overlay PNG.

evaluate.json writes one prediction per case (``<pred_dir>/case_XXXXX/imaging_seg.nii.gz``, in the image's own
space); :func:`write_kits19_report` scores them against the split's references with the challenge's definitions
(``shared.metrics.kits19.case_dice``: kidney = labels 1+2, tumour = 2) and draws the case with the most tumour.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.data.atomic import atomic_path
from shared.metrics.kits19 import case_dice
from shared.metrics.label_volumes import load_label_pair
from shared.metrics.table import MetricTable
from shared.visualize import save_overlay_png_from_files

__all__ = ["find_prediction", "write_kits19_report"]

CLASS_NAMES = {1: "kidney", 2: "tumour"}


def find_prediction(pred_dir: str | Path, case: str) -> Path:
    """The prediction NIfTI of ``case`` (``case/<file>`` or ``case_<postfix>``) in ``pred_dir``; error if none."""
    pred_dir = Path(pred_dir)
    found = sorted(pred_dir.glob(f"{case}/*.nii*")) + sorted(pred_dir.glob(f"{case}_*.nii*"))
    if not found:
        raise FileNotFoundError(f"{pred_dir}: no prediction for {case} (expected {case}/imaging_seg.nii.gz)")
    return found[0]


def write_kits19_report(
    pred_dir: str, entries: Sequence[dict], out_dir: str, hu_window: Sequence[float] = (-200, 500)
) -> MetricTable:
    """Score the predictions of ``entries`` (datalist items with ``image``, ``label``, ``case``), print the table,
    write it as ``kits19_metrics.csv`` and ``kits19_metrics.txt`` and draw ``overlay.png`` in ``out_dir``."""
    if not entries:
        raise ValueError("no case to evaluate: the datalist split is empty")
    rows, tumour_voxels = [], []
    for entry in entries:
        pred, ref, _ = load_label_pair(find_prediction(pred_dir, entry["case"]), entry["label"], num_labels=3)
        rows.append({"case": entry["case"], **case_dice(pred, ref)})
        tumour_voxels.append(int(np.count_nonzero(ref == 2)))
    summary = {
        "cases": len(rows),
        **{key: float(np.mean([r[key] for r in rows])) for key in ("kidney_dice", "tumour_dice", "mean_dice")},
    }
    table = MetricTable(rows, summary, title=f"KiTS19 evaluation of {pred_dir} (Dice per case, mean over cases)")
    print(table.to_text())
    out = Path(out_dir)
    table.write_csv(out / "kits19_metrics.csv")
    with atomic_path(out / "kits19_metrics.txt") as tmp:
        tmp.write_text(table.to_text() + "\n")
    shown = entries[int(np.argmax(tumour_voxels))]
    save_overlay_png_from_files(
        shown["image"],
        shown["label"],
        find_prediction(pred_dir, shown["case"]),
        out / "overlay.png",
        window=tuple(hu_window),
        class_names=CLASS_NAMES,
        title=f"{shown['case']}: reference (left), MSAN (right)",
    )
    return table
