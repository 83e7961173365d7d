"""The evaluation reports of a datalist split (evaluate.json): per-case table, summary, CSV and an overlay PNG.

evaluate.json writes one prediction per case in the image's own space (``<pred_dir>/case_XXXXX/imaging_seg.nii.gz``
for KiTS19, ``<pred_dir>/volume-N_seg.nii.gz`` for LiTS). :func:`write_kits19_report` scores them with the KiTS19
challenge's definitions (``shared.metrics.kits19.case_dice``: kidney = labels 1+2, tumour = 2),
:func:`write_lits_report` as ``shared.metrics.lits`` defines (lesion and liver Dice per case, global Dice, lesion Dice
by size). Both draw the case with the most tumour/lesion voxels.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.data.atomic import atomic_path
from shared.metrics import lits
from shared.metrics.kits19 import case_dice
from shared.metrics.label_volumes import load_label_pair
from shared.metrics.table import MetricTable
from shared.visualize import save_overlay_png_from_files

__all__ = ["find_prediction", "write_kits19_report", "write_lits_report"]

CLASS_NAMES = {1: "kidney", 2: "tumour"}
LITS_CLASS_NAMES = {1: "liver", 2: "lesion"}


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
    _check_entries(entries)
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
    _draw_largest(entries, tumour_voxels, pred_dir, out, hu_window, CLASS_NAMES, "MSAN")
    return table


def write_lits_report(
    pred_dir: str, entries: Sequence[dict], out_dir: str, hu_window: Sequence[float] = (-200, 300)
) -> MetricTable:
    """Score the LiTS predictions of ``entries`` (datalist items with ``image``, ``label``, ``case``), print the table,
    write ``lits_metrics.csv`` and draw ``overlay.png`` in ``out_dir``; return the table."""
    _check_entries(entries)
    rows, cases, lesion_voxels = [], [], []
    for entry in entries:
        pred, ref, spacing = load_label_pair(find_prediction(pred_dir, entry["case"]), entry["label"], num_labels=3)
        scores = lits.score_case(pred, ref, spacing)
        cases.append(scores)
        lesion_voxels.append(int(np.count_nonzero(ref == 2)))
        sizes = [lits.size_class(d) for d, _ in scores.lesions]
        rows.append(
            {
                "case": entry["case"],
                "lesion_dice": scores.dice["lesion"],
                "liver_dice": scores.dice["liver"],
                **{f"lesions_{name}": sizes.count(name) for name in lits.SIZE_CLASSES},
            }
        )
    table = MetricTable(
        rows, lits.summarize(cases), title=f"LiTS evaluation of {pred_dir} (lesion Dice by size: Table 2)"
    )
    print(table.to_text())
    out = Path(out_dir)
    table.write_csv(out / "lits_metrics.csv")
    _draw_largest(entries, lesion_voxels, pred_dir, out, hu_window, LITS_CLASS_NAMES, "VA Mask R-CNN")
    return table


def _check_entries(entries: Sequence[dict]) -> None:
    if not entries:
        raise ValueError("no case to evaluate: the datalist split is empty")


def _draw_largest(
    entries: Sequence[dict],
    voxels: Sequence[int],
    pred_dir: str,
    out: Path,
    hu_window: Sequence[float],
    class_names: dict[int, str],
    network: str,
) -> None:
    """``out/overlay.png``: reference and prediction of the case with the most ``voxels`` (tumour or lesion)."""
    shown = entries[int(np.argmax(voxels))]
    save_overlay_png_from_files(
        shown["image"],
        shown["label"],
        find_prediction(pred_dir, shown["case"]),
        out / "overlay.png",
        window=tuple(hu_window),
        class_names=class_names,
        title=f"{shown['case']}: reference (left), {network} (right)",
    )
