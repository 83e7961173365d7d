"""DeepLesion detection scoring: FROC sensitivities at FPs per image, as 3DCE evaluates (Yan et al. 2018) and the
CS-Att paper reports (Tao et al. 2019, sec. 3 "Evaluation metrics": IoU > 0.5, sensitivity at 0.5, 1, 2, 4, 8, 16
FPs per image; Table 2: sensitivity at 4 FPs per image by lesion type, diameter and slice interval), and AP50 beside
them (``average_precision``: VOC all-points AP at IoU >= 0.5, which VA paper 004 sec. 3.3 reports on DeepLesion).

Two conventions (``CONVENTIONS``), chosen by ``convention``:

- ``"3dce"`` (default): the papers' tables, which come from 3DCE's evaluation code (``rcnn/utils/evaluation.py``
  of lesion_detector_3DCE: ``IOU``, ``FROC``, ``sens_at_FP``). Boxes are inclusive pixel ranges: a box
  ``[x1, y1, x2, y2]`` covers ``(x2 - x1 + 1) * (y2 - y1 + 1)`` pixels; a detection hits a lesion at overlap
  ``>= iou_threshold``. The sensitivity at a rate is read off the pooled FROC curve as 3DCE's ``sens_at_FP`` reads
  it (``scipy.interpolate.interp1d(..., fill_value="extrapolate")`` of sensitivity over FPs per image along the
  curve sorted by score, which looks rates up with ``searchsorted(side="left")``): where the curve reaches the rate
  exactly, the point where it first does (the detection that is the rate's last FP, before the hits ranked below
  it; ``np.interp`` would take the last such point); between two points, linearly between them; beyond the curve's
  end, its last point (3DCE extrapolates the last segment, which is flat whenever the lowest-scored detection is a
  FP; the DeepLesion evaluation code that followed 3DCE reports the last point).
- ``"reachable"``: boxes are continuous, area ``(x2 - x1) * (y2 - y1)``; the sensitivity at a rate is that of the
  lowest score threshold whose FPs per image stay <= the rate, an operating point a threshold can reach.

Boxes are ``[x1, y1, x2, y2]`` in 0-based pixel coordinates of the PNG's pixel grid in both.

Detection file (written by the cs_att_deeplesion inference, read by ``evaluate_dir``): a JSON object ::

    {"detections": [{"series": "000001_01_01", "slice": 109, "box": [x1, y1, x2, y2], "score": 0.93}, ...]}

``series`` is the ``Images_png`` folder name, ``slice`` the slice file number (``109.png``), ``box`` 0-based pixel
coordinates as above and ``score`` the lesion confidence; other keys (e.g. world coordinates) are allowed and
ignored. ``write_detections`` / ``read_detections`` write and read it.

The same FROC as an ignite metric for detection evaluators is ``shared.metrics.froc_metric.DeepLesionFROCMetric``.
"""

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.data.atomic import atomic_path
from shared.data.deeplesion import LESION_TYPE_ABBREVIATIONS, read_annotations, series_name, split_code
from shared.metrics.table import MetricTable

FP_RATES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
TYPE_ORDER = ("LU", "ME", "LV", "ST", "PV", "AB", "KD", "BN")  # the lesion type columns of CS-Att Table 2
DIAMETER_GROUPS = ("<10mm", "10-30mm", ">30mm")
INTERVAL_GROUPS = ("<2.5mm", ">=2.5mm")
CONVENTIONS = ("3dce", "reachable")
CONVENTION_TITLES = {
    "3dce": "3DCE convention: +1 pixel boxes, FROC interpolated as sens_at_FP",
    "reachable": "reachable convention: continuous boxes, reachable operating points",
}


def box_overlaps(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, use_iobb: bool = False, pixel_inclusive: bool = True
) -> np.ndarray:
    """(K, G) overlaps of detected and ground-truth boxes: IoU, or with ``use_iobb`` IoBB = intersection / area of
    the detected box (DeepLesion paper's criterion). With ``pixel_inclusive`` (3DCE) widths and heights are
    ``x2 - x1 + 1`` and ``y2 - y1 + 1`` pixels; without, ``x2 - x1`` and ``y2 - y1`` (as torchvision)."""
    extent = 1.0 if pixel_inclusive else 0.0
    det = np.asarray(det_boxes, dtype=float).reshape(-1, 4)[:, None, :]
    gt = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)[None, :, :]
    width = np.clip(np.minimum(det[..., 2], gt[..., 2]) - np.maximum(det[..., 0], gt[..., 0]) + extent, 0, None)
    height = np.clip(np.minimum(det[..., 3], gt[..., 3]) - np.maximum(det[..., 1], gt[..., 1]) + extent, 0, None)
    inter = width * height
    det_area = (det[..., 2] - det[..., 0] + extent) * (det[..., 3] - det[..., 1] + extent)
    gt_area = (gt[..., 2] - gt[..., 0] + extent) * (gt[..., 3] - gt[..., 1] + extent)
    denominator = det_area if use_iobb else det_area + gt_area - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, inter / denominator, 0.0)


def _operating_point(curve_fps: np.ndarray, fp_rate: float, convention: str) -> int:
    """Index of the curve point that gives the sensitivity at ``fp_rate`` (3DCE: the left end of the segment
    interpolated, or the point reaching the rate exactly)."""
    if convention == "reachable" or fp_rate > curve_fps[-1]:
        return int(np.flatnonzero(curve_fps <= fp_rate)[-1])
    first = int(np.searchsorted(curve_fps, fp_rate, side="left"))  # >= 1: the curve starts at 0 FPs, rates are > 0
    return first if curve_fps[first] == fp_rate else first - 1


def _sensitivity_at(curve_fps: np.ndarray, curve_sensitivity: np.ndarray, fp_rate: float, convention: str) -> float:
    """Sensitivity at ``fp_rate``: the operating point's, or 3DCE's linear interpolation to the next point."""
    i = _operating_point(curve_fps, fp_rate, convention)
    if convention == "reachable" or i == len(curve_fps) - 1 or curve_fps[i] == fp_rate:
        return float(curve_sensitivity[i])
    fraction = (fp_rate - curve_fps[i]) / (curve_fps[i + 1] - curve_fps[i])
    return float(curve_sensitivity[i] + fraction * (curve_sensitivity[i + 1] - curve_sensitivity[i]))


@dataclass
class FROCResult:
    """Sensitivities at FP rates, the whole FROC curve, and per lesion the best score of a detection finding it.

    The curve has one point per distinct detection score (threshold), in decreasing order, after a first point
    (0, 0) at threshold +inf (no detection kept). ``lesion_scores[i][g]`` is the highest score among the
    detections of image i matching lesion g (-inf if none): the lesion is found at every threshold <= it.
    ``thresholds[j]`` is ``threshold_at(fp_rates[j])``.
    """

    convention: str
    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray
    thresholds: np.ndarray
    curve_fps: np.ndarray
    curve_sensitivity: np.ndarray
    curve_thresholds: np.ndarray
    lesion_scores: list[np.ndarray]
    detection_is_fp: list[np.ndarray]
    num_images: int
    num_lesions: int

    @property
    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FPs per image, sensitivity) of every operating point, for plotting."""
        return self.curve_fps, self.curve_sensitivity

    def threshold_at(self, fp_rate: float) -> float:
        """Score threshold of the operating point behind the sensitivity at ``fp_rate`` (+inf: no detection kept).

        Reachable convention: the lowest threshold whose FPs per image are <= ``fp_rate``. 3DCE convention: the
        threshold of the point where the curve reaches ``fp_rate`` exactly, else of the last point before it, which
        is the point whose sensitivity 3DCE reports unless equal scores are interpolated (see ``froc``).
        """
        return float(self.curve_thresholds[_operating_point(self.curve_fps, fp_rate, self.convention)])

    def as_dict(self) -> dict[str, float]:
        """``{"sens@0.5": ..., ..., "sens@16": ...}``."""
        return {f"sens@{rate:g}": float(s) for rate, s in zip(self.fp_rates, self.sensitivities)}


def _as_boxes(boxes: Any, what: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=float)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4 or not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: expected a (K, 4) array of finite [x1, y1, x2, y2], got shape {array.shape}")
    if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
        raise ValueError(f"{what}: boxes must have x2 >= x1 and y2 >= y1 ([x1, y1, x2, y2] order)")
    return array


def froc(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    fp_rates: Sequence[float] = FP_RATES,
    iou_threshold: float = 0.5,
    use_iobb: bool = False,
    convention: str = "3dce",
) -> FROCResult:
    """FROC of detections on a set of images (lists with one entry per image), as 3DCE's ``FROC``/``sens_at_FP``.

    All detections of all images are pooled and sorted by score. Going down the list, a detection overlapping
    (IoU, or IoBB with ``use_iobb``, >= ``iou_threshold``) a not-yet-found lesion of its image is a hit and finds
    every such lesion, as 3DCE marks all unfound lesions above the threshold, not only the one with the highest
    overlap; a detection overlapping only already-found lesions is neither a hit nor a false positive; any other
    detection, and every detection on an image without lesions, is a false positive. Hits and FPs therefore do not
    depend on the order among detections.

    Equal scores: 3DCE's curve has one point per detection, in the order an unstable sort leaves equal scores in.
    Here detections with equal scores are kept or dropped together: one curve point per distinct score, and the
    3DCE convention interpolates straight across a group of equal scores, as ROC analysis treats ties (Fawcett
    2006). Without equal scores both curves have the same points.

    Sensitivity at a rate (``convention``, see the module docstring): 3DCE's reading of the curve (``"3dce"``) or
    the lowest reachable score threshold with FPs / number of images <= the rate (``"reachable"``); past the curve's
    end both give its last point. Boxes are inclusive pixel ranges (+1) in the 3DCE convention, continuous in the
    other. If no image has a lesion, sensitivities are NaN.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if not len(pred_boxes) == len(pred_scores) == len(gt_boxes):
        raise ValueError(
            f"one entry per image expected: {len(pred_boxes)} pred_boxes, {len(pred_scores)} pred_scores, "
            f"{len(gt_boxes)} gt_boxes"
        )
    if any(rate <= 0 for rate in fp_rates):
        raise ValueError(f"fp_rates must be > 0, got {list(fp_rates)}")
    lesion_scores, detection_is_fp, all_scores = [], [], []
    for i, (boxes, scores, gts) in enumerate(zip(pred_boxes, pred_scores, gt_boxes)):
        boxes, gts = _as_boxes(boxes, f"pred_boxes[{i}]"), _as_boxes(gts, f"gt_boxes[{i}]")
        scores = np.asarray(scores, dtype=float).reshape(-1)
        if len(scores) != len(boxes) or not np.all(np.isfinite(scores)):
            raise ValueError(f"pred_scores[{i}]: expected {len(boxes)} finite scores, got {scores.tolist()}")
        match = box_overlaps(boxes, gts, use_iobb, pixel_inclusive=convention == "3dce") >= iou_threshold
        detection_is_fp.append(~match.any(axis=1))
        lesion_scores.append(np.where(match, scores[:, None], -np.inf).max(axis=0, initial=-np.inf))
        all_scores.append(scores)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    fp_scores = np.sort(scores[np.concatenate(detection_is_fp)]) if all_scores else np.zeros(0)
    found_scores = np.sort(np.concatenate(lesion_scores)) if lesion_scores else np.zeros(0)
    num_images, num_lesions = len(gt_boxes), len(found_scores)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    fps = (len(fp_scores) - np.searchsorted(fp_scores, thresholds, side="left")) / max(num_images, 1)
    found = len(found_scores) - np.searchsorted(found_scores, thresholds, side="left")
    sensitivity = found / num_lesions if num_lesions else np.full(len(thresholds), math.nan)
    return FROCResult(
        convention=convention,
        fp_rates=tuple(float(r) for r in fp_rates),
        sensitivities=np.array([_sensitivity_at(fps, sensitivity, rate, convention) for rate in fp_rates]),
        thresholds=thresholds[[_operating_point(fps, rate, convention) for rate in fp_rates]],
        curve_fps=fps,
        curve_sensitivity=sensitivity,
        curve_thresholds=thresholds,
        lesion_scores=lesion_scores,
        detection_is_fp=detection_is_fp,
        num_images=num_images,
        num_lesions=num_lesions,
    )


def average_precision(
    pred_boxes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    iou_threshold: float = 0.5,
    pixel_inclusive: bool = True,
) -> float:
    """AP at IoU >= ``iou_threshold`` (AP50 by default; VA paper 004 sec. 3.3 reports it on DeepLesion), pooled over
    images, as the PASCAL VOC devkit computes it.

    All detections of all images are sorted by decreasing score (equal scores keep their input order); going down
    the list, a detection is a true positive if the ground-truth box of its image it overlaps most has IoU >=
    ``iou_threshold`` and is not yet matched (it then becomes matched), else a false positive (a second detection
    of a lesion is one). AP is the area under the precision-recall curve with all-points interpolation (VOC 2010
    and later): precision made monotone from the right, summed over every change of recall. Boxes are inclusive
    pixel ranges (+1, as 3DCE's FROC and the VOC devkit) with ``pixel_inclusive``. No detection gives 0; no lesion
    gives NaN.
    """
    if not len(pred_boxes) == len(pred_scores) == len(gt_boxes):
        raise ValueError(
            f"one entry per image expected: {len(pred_boxes)} pred_boxes, {len(pred_scores)} pred_scores, "
            f"{len(gt_boxes)} gt_boxes"
        )
    gts = [_as_boxes(g, f"gt_boxes[{i}]") for i, g in enumerate(gt_boxes)]
    num_lesions = sum(len(g) for g in gts)
    if num_lesions == 0:
        return math.nan
    pooled = [
        (float(score), i, box)
        for i, (boxes, scores) in enumerate(zip(pred_boxes, pred_scores))
        for box, score in zip(_as_boxes(boxes, f"pred_boxes[{i}]"), np.asarray(scores, dtype=float).reshape(-1))
    ]
    pooled.sort(key=lambda item: -item[0])
    matched = [np.zeros(len(g), dtype=bool) for g in gts]
    is_tp = np.zeros(len(pooled), dtype=bool)
    for k, (_, i, box) in enumerate(pooled):
        if not len(gts[i]):
            continue
        overlaps = box_overlaps(box[None], gts[i], pixel_inclusive=pixel_inclusive)[0]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold and not matched[i][best]:
            matched[i][best] = is_tp[k] = True
    tp = np.cumsum(is_tp)
    recall = np.concatenate([[0.0], tp / num_lesions, [1.0]])
    precision = np.concatenate([[0.0], tp / np.arange(1, len(pooled) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def type_group(type_id: int) -> str | None:
    """Table 2 abbreviation of a DeepLesion ``Coarse_lesion_type`` (None for -1, unknown)."""
    return LESION_TYPE_ABBREVIATIONS.get(int(type_id))


def diameter_group(long_diameter_mm: float) -> str:
    """``"<10mm"``, ``"10-30mm"`` (both ends included) or ``">30mm"`` of a lesion's long (RECIST) diameter."""
    if long_diameter_mm < 10:
        return DIAMETER_GROUPS[0]
    return DIAMETER_GROUPS[1] if long_diameter_mm <= 30 else DIAMETER_GROUPS[2]


def interval_group(slice_interval_mm: float) -> str:
    """``"<2.5mm"`` or ``">=2.5mm"`` of a CT's slice interval."""
    return INTERVAL_GROUPS[0] if slice_interval_mm < 2.5 else INTERVAL_GROUPS[1]


def subgroup_sensitivity(
    result: FROCResult, lesion_groups: Sequence[Sequence[str | None]], fp_rate: float = 4.0
) -> dict[str, float]:
    """Sensitivity within each group of lesions at the score threshold fixed from ALL images at ``fp_rate``.

    ``lesion_groups[i][g]`` names the group of lesion g of image i (None: in no group). Groups are returned in
    first-seen order.
    """
    threshold = result.threshold_at(fp_rate)
    found: dict[str, list[bool]] = {}
    for i, (groups, scores) in enumerate(zip(lesion_groups, result.lesion_scores, strict=True)):
        if len(groups) != len(scores):
            raise ValueError(f"lesion_groups[{i}] has {len(groups)} entries for {len(scores)} lesions")
        for group, score in zip(groups, scores):
            if group is not None:
                found.setdefault(group, []).append(bool(score >= threshold))
    return {group: float(np.mean(hits)) for group, hits in found.items()}


def table2_sensitivities(
    result: FROCResult,
    lesion_types: Sequence[Sequence[int]],
    diameters_mm: Sequence[Sequence[float]],
    slice_intervals_mm: Sequence[float],
    fp_rate: float = 4.0,
) -> dict[str, float]:
    """CS-Att Table 2: sensitivity at ``fp_rate`` per lesion type (LU ME LV ST PV AB KD BN), long diameter
    (<10, 10-30, >30 mm) and slice interval (<2.5, >=2.5 mm); NaN for a group without lesion.

    Per image: the lesions' type ids and long diameters (mm), and the image's slice interval (mm).
    """
    types = subgroup_sensitivity(result, [[type_group(t) for t in ts] for ts in lesion_types], fp_rate)
    sizes = subgroup_sensitivity(result, [[diameter_group(d) for d in ds] for ds in diameters_mm], fp_rate)
    intervals = subgroup_sensitivity(
        result,
        [[interval_group(s)] * len(ts) for s, ts in zip(slice_intervals_mm, lesion_types, strict=True)],
        fp_rate,
    )
    merged = {**types, **sizes, **intervals}
    return {group: merged.get(group, math.nan) for group in (*TYPE_ORDER, *DIAMETER_GROUPS, *INTERVAL_GROUPS)}


def write_detections(path: str | os.PathLike, detections: Iterable[dict[str, Any]]) -> Path:
    """Write detections (dicts with series, slice, box, score) as the module's JSON format, atomically."""
    entries = [_checked_detection(d, f"detection {i}") for i, d in enumerate(detections)]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"detections": entries}, indent=1))
    return Path(path)


def read_detections(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The detections of a JSON file in the module's format, each checked (ValueError naming file and entry)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the detections JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("detections"), list):
        raise ValueError(f'{path}: expected a JSON object {{"detections": [...]}}')
    return [_checked_detection(d, f"{path}: detection {i}") for i, d in enumerate(data["detections"])]


def _checked_detection(entry: Any, where: str) -> dict[str, Any]:
    """``entry`` with series (str), slice (int), box (4 floats, x2 >= x1, y2 >= y1) and score (float) checked."""
    try:
        series, slice_number = str(entry["series"]), int(entry["slice"])
        box, score = [float(v) for v in entry["box"]], float(entry["score"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: {entry!r} needs series (str), slice (int), box [x1, y1, x2, y2] and score ({err!r})"
        ) from err
    if len(box) != 4 or box[2] < box[0] or box[3] < box[1] or not all(map(math.isfinite, [*box, score])):
        raise ValueError(f"{where}: box {box} must be finite [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")
    return {**entry, "series": series, "slice": slice_number, "box": box, "score": score}


@dataclass
class KeySlice:
    """Ground truth of one evaluated key slice: 0-based boxes, lesion type ids, long diameters (mm), slice interval."""

    series: str
    slice: int
    boxes: list[list[float]]
    types: list[int]
    diameters_mm: list[float]
    slice_interval_mm: float


def key_slices(rows: Iterable[dict[str, Any]], split: str = "test") -> list[KeySlice]:
    """Key slices of a split from ``shared.data.deeplesion.read_annotations`` rows, noisy rows removed.

    As 3DCE and CS-Att (sec. 3: "35 noisy lesion annotations ... are removed for training and testing"), rows with
    ``Possibly_noisy`` are dropped, and a key slice whose lesions are all noisy is not evaluated. Boxes become
    0-based (DL_info.csv is 1-based); the long diameter is ``Lesion_diameters_Pixel_[0]`` times the pixel spacing.
    Sorted by series, then slice.
    """
    code = split_code(split)
    slices: dict[tuple[str, int], KeySlice] = {}
    for row in rows:
        if row["Train_Val_Test"] != code or row["Possibly_noisy"]:
            continue
        series, number = series_name(row), row["Key_slice_index"]
        spacing = row["Spacing_mm_px_"]
        entry = slices.setdefault((series, number), KeySlice(series, number, [], [], [], spacing[2]))
        entry.boxes.append([v - 1.0 for v in row["Bounding_boxes"]])
        entry.types.append(row["Coarse_lesion_type"])
        entry.diameters_mm.append(row["Lesion_diameters_Pixel_"][0] * spacing[0])
    return [slices[key] for key in sorted(slices)]


def score_detections(
    detections: Sequence[dict[str, Any]],
    truth: Sequence[KeySlice],
    iou_threshold: float = 0.5,
    use_iobb: bool = False,
    fp_rate: float = 4.0,
    source: str = "detections",
    convention: str = "3dce",
) -> tuple[MetricTable, FROCResult]:
    """FROC of detections (dicts of the detection file) on key slices, as a table and the ``FROCResult``.

    ``convention``: ``"3dce"`` (the papers' tables) or ``"reachable"``, see ``froc``; the title names it.
    Rows: per key slice, its lesions, those found and the false positives at the threshold of ``fp_rate``.
    Summary: sensitivities at 0.5-16 FPs per image, AP at ``iou_threshold`` (``ap50``: ``average_precision``, VOC
    all-points; IoU even with ``use_iobb``), and CS-Att Table 2 groups at ``fp_rate``. Detections on other
    slices are ignored and counted; if there are detections but none on a key slice, a ValueError (naming
    ``source``) says so, as series names or slice numbers must then be wrong.
    """
    if not truth:
        raise ValueError("no key slice to evaluate")
    by_image: dict[tuple[str, int], list[dict[str, Any]]] = {(k.series, k.slice): [] for k in truth}
    for det in detections:
        if (det["series"], det["slice"]) in by_image:
            by_image[(det["series"], det["slice"])].append(det)
    used = sum(len(v) for v in by_image.values())
    if detections and not used:
        example = detections[0]
        raise ValueError(
            f"{source}: none of its {len(detections)} detections is on an evaluated key slice (e.g. series "
            f"{example['series']!r} slice {example['slice']}, while key slices look like series "
            f"{truth[0].series!r} slice {truth[0].slice}); check the series names and slice numbers"
        )
    dets = [by_image[(k.series, k.slice)] for k in truth]
    result = froc(
        [[d["box"] for d in ds] for ds in dets],
        [[d["score"] for d in ds] for ds in dets],
        [k.boxes for k in truth],
        iou_threshold=iou_threshold,
        use_iobb=use_iobb,
        convention=convention,
    )
    threshold = result.threshold_at(fp_rate)
    rows = [
        {
            "series": k.series,
            "slice": k.slice,
            "lesions": len(k.boxes),
            f"found@{fp_rate:g}": int(np.count_nonzero(found >= threshold)),
            f"fp@{fp_rate:g}": int(np.count_nonzero(is_fp & (np.array([d["score"] for d in ds]) >= threshold))),
        }
        for k, ds, found, is_fp in zip(truth, dets, result.lesion_scores, result.detection_is_fp)
    ]
    breakdown = table2_sensitivities(
        result, [k.types for k in truth], [k.diameters_mm for k in truth], [k.slice_interval_mm for k in truth], fp_rate
    )
    ap = average_precision(
        [[d["box"] for d in ds] for ds in dets],
        [[d["score"] for d in ds] for ds in dets],
        [k.boxes for k in truth],
        iou_threshold,
        pixel_inclusive=convention == "3dce",
    )
    summary = {
        "images": result.num_images,
        "lesions": result.num_lesions,
        "detections_ignored": len(detections) - used,
        **result.as_dict(),
        f"ap{round(100 * iou_threshold)}": ap,
        **{f"sens@{fp_rate:g}_{group}": value for group, value in breakdown.items()},
    }
    criterion = "IoBB" if use_iobb else "IoU"
    title = f"DeepLesion: {source} ({criterion} >= {iou_threshold}; {CONVENTION_TITLES[convention]})"
    return MetricTable(rows, summary, title=title), result


def evaluate_dir(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    split: str = "test",
    iou_threshold: float = 0.5,
    use_iobb: bool = False,
    fp_rate: float = 4.0,
    convention: str = "3dce",
) -> MetricTable:
    """Score ``<pred_dir>/detections.json`` on the key slices of ``split`` (``key_slices``) of the DeepLesion root
    ``ref_dir``, read with ``shared.data.deeplesion.read_annotations``, in ``convention`` (``"3dce"``: the papers'
    tables; ``"reachable"``); see ``score_detections``."""
    path = Path(pred_dir) / "detections.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found; the detection inference writes it (format: shared.metrics.deeplesion)")
    truth = key_slices(read_annotations(ref_dir), split)
    if not truth:
        raise ValueError(f"{ref_dir}: no key slice in split {split!r} (after removing noisy rows)")
    table, _ = score_detections(
        read_detections(path), truth, iou_threshold, use_iobb, fp_rate, source=str(path), convention=convention
    )
    table.title += f", {split} key slices of {ref_dir}"
    return table
