"""Inputs and the evaluation report of the va_maskrcnn_lits bundle.

- :func:`volume_entries`: every CT volume of a folder (``.nii``, ``.nii.gz``, DICOM series folders), each checked to
  be a readable 3D volume before anything is written, so a bad input stops the run with its name and no output.
- :func:`write_report`: LiTS scores (``shared.metrics.lits``) of the predictions written by evaluate.json for the
  cases of a datalist split, in the original image space: per-case table, summary (Dice per case, global Dice,
  lesion Dice by size), a CSV, and an overlay PNG of the case with the most lesion voxels.
"""

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.engines.detection_inferer import find_volumes
from shared.metrics.label_volumes import load_label_pair
from shared.metrics.lits import SIZE_CLASSES, score_case, size_class, summarize
from shared.metrics.table import MetricTable
from shared.visualize import save_overlay_png_from_files

CLASS_NAMES = {1: "liver", 2: "lesion"}


def volume_entries(dataset_dir: str) -> list[dict]:
    """``[{"image": path, "case": name}]`` for every volume of ``dataset_dir``; a ValueError naming every input
    that cannot be read as a 3D volume (corrupt file, empty DICOM folder, 2D image)."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    entries, problems = [], []
    for path in find_volumes(dataset_dir):
        try:
            shape = tuple(load(str(path)).shape)
        except Exception as err:  # the readers raise many types; all mean "unreadable"
            problems.append(f"{path}: cannot be read ({type(err).__name__}: {err}); re-export or remove it")
            continue
        if len(shape) != 3:
            problems.append(f"{path}: not a 3D volume (shape {shape}); give one CT volume per file or DICOM folder")
            continue
        name = re.sub(r"\.nii(\.gz)?$", "", path.name)
        entries.append({"image": str(path), "case": name})
    if problems:
        raise ValueError(
            f"{len(problems)} unreadable input(s) in {dataset_dir}, nothing written:\n  " + "\n  ".join(problems)
        )
    return entries


def _prediction(pred_dir: Path, case: str) -> Path:
    found = sorted(pred_dir.glob(f"{case}_*.nii*")) + sorted(pred_dir.glob(f"{case}/{case}_*.nii*"))
    if not found:
        raise FileNotFoundError(f"{pred_dir}: no prediction for case {case} (expected {case}_seg.nii.gz)")
    return found[0]


def write_report(pred_dir: str, entries: Sequence[dict], out_dir: str, hu_window: Sequence[float]) -> MetricTable:
    """Score the predictions of ``entries`` (datalist items with ``image``, ``label``, ``case``), print the table,
    write ``lits_metrics.csv`` and ``overlay.png`` into ``out_dir``; return the table."""
    pred_dir, out = Path(pred_dir), Path(out_dir)
    rows, cases, lesion_voxels = [], [], []
    for entry in entries:
        pred_path = _prediction(pred_dir, entry["case"])
        pred, ref, spacing = load_label_pair(pred_path, Path(entry["label"]), num_labels=3)
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
    table = MetricTable(rows, summarize(cases), title=f"LiTS evaluation of {pred_dir}")
    print(table.to_text())
    table.write_csv(out / "lits_metrics.csv")
    shown = entries[int(np.argmax(lesion_voxels))]
    save_overlay_png_from_files(
        shown["image"],
        shown["label"],
        _prediction(pred_dir, shown["case"]),
        out / "overlay.png",
        window=tuple(hu_window),
        class_names=CLASS_NAMES,
        title=f"{shown['case']}: reference (left), VA Mask R-CNN (right)",
    )
    return table
