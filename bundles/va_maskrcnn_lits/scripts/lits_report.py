"""The LiTS evaluation report of a datalist split (evaluate.json): per-case table, summary, CSV and an overlay PNG.

evaluate.json writes one prediction per case (``<pred_dir>/volume-N_seg.nii.gz``, in the volume's own space);
:func:`write_lits_report` scores them against the split's references as ``shared.metrics.lits`` defines (lesion and
liver Dice per case, global Dice, lesion Dice by size) and draws the case with the most lesion voxels.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.engines.segmentation_report import find_prediction
from shared.metrics.label_volumes import load_label_pair
from shared.metrics.lits import SIZE_CLASSES, score_case, size_class, summarize
from shared.metrics.table import MetricTable
from shared.visualize import save_overlay_png_from_files

CLASS_NAMES = {1: "liver", 2: "lesion"}


def write_lits_report(pred_dir: str, entries: Sequence[dict], out_dir: str, hu_window: Sequence[float]) -> MetricTable:
    """Score the predictions of ``entries`` (datalist items with ``image``, ``label``, ``case``), print the table,
    write ``lits_metrics.csv`` and ``overlay.png`` into ``out_dir``; return the table."""
    if not entries:
        raise ValueError("no case to evaluate: the datalist split is empty")
    rows, cases, lesion_voxels = [], [], []
    for entry in entries:
        pred, ref, spacing = load_label_pair(find_prediction(pred_dir, entry["case"]), entry["label"], num_labels=3)
        scores = score_case(pred, ref, spacing)
        cases.append(scores)
        lesion_voxels.append(int(np.count_nonzero(ref == 2)))
        sizes = [size_class(d) for d, _ in scores.lesions]
        rows.append(
            {
                "case": entry["case"],
                "lesion_dice": scores.dice["lesion"],
                "liver_dice": scores.dice["liver"],
                **{f"lesions_{name}": sizes.count(name) for name in SIZE_CLASSES},
            }
        )
    table = MetricTable(rows, summarize(cases), title=f"LiTS evaluation of {pred_dir} (lesion Dice by size: Table 2)")
    print(table.to_text())
    out = Path(out_dir)
    table.write_csv(out / "lits_metrics.csv")
    shown = entries[int(np.argmax(lesion_voxels))]
    save_overlay_png_from_files(
        shown["image"],
        shown["label"],
        find_prediction(pred_dir, shown["case"]),
        out / "overlay.png",
        window=tuple(hu_window),
        class_names=CLASS_NAMES,
        title=f"{shown['case']}: reference (left), VA Mask R-CNN (right)",
    )
    return table
