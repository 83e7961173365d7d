"""DeepLesion FROC: overlaps (3DCE's +1 pixel boxes and continuous ones), hit / duplicate / FP rules, the 3DCE and
reachable conventions at FP rates (ties, IoU = 0.5 exactly, images without lesions, rates past the curve's end),
Table 2 subgroups, the detection file, evaluate_dir on a DL_info.csv fixture, the CLI and the ignite metric."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torchvision.ops import box_iou

from shared.data.deeplesion import COLUMNS
from shared.metrics import deeplesion as dl


def test_iou_and_iobb_by_hand_and_iou_as_torchvision():
    det = np.array([[0, 0, 10, 10]])
    continuous = {"pixel_inclusive": False}
    assert dl.box_overlaps(det, [[5, 0, 15, 10]], **continuous)[0, 0] == pytest.approx(50 / 150)
    assert dl.box_overlaps(det, [[0, 0, 20, 20]], **continuous)[0, 0] == pytest.approx(100 / 400)  # det inside
    assert dl.box_overlaps(det, [[0, 0, 20, 20]], use_iobb=True, **continuous)[0, 0] == 1.0  # / detected box's area
    assert dl.box_overlaps(det, [[20, 20, 30, 30]], **continuous)[0, 0] == 0.0
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 50, (6, 2, 2)), axis=1).transpose(0, 2, 1).reshape(6, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.uniform(0, 50, (4, 2, 2)), axis=1).transpose(0, 2, 1).reshape(4, 4)[:, [0, 2, 1, 3]]
    expected = box_iou(torch.tensor(a), torch.tensor(b)).numpy()  # continuous convention: no +1
    assert dl.box_overlaps(a, b, **continuous) == pytest.approx(expected)


def test_overlaps_default_to_3dce_inclusive_pixels_by_hand():
    det = np.array([[0, 0, 10, 10]])  # 11 x 11 = 121 pixels
    # [5, 0, 15, 10]: 11 x 11, columns 5-10 shared: 6 x 11 = 66 of 121 + 121 - 66 = 176
    assert dl.box_overlaps(det, [[5, 0, 15, 10]])[0, 0] == pytest.approx(66 / 176)
    assert dl.box_overlaps(det, [[0, 0, 20, 20]])[0, 0] == pytest.approx(121 / 441)  # inside a 21 x 21 lesion
    assert dl.box_overlaps(det, [[0, 0, 20, 20]], use_iobb=True)[0, 0] == 1.0
    assert dl.box_overlaps(det, [[11, 0, 21, 10]])[0, 0] == 0.0  # adjacent pixel columns: touching, no overlap
    assert dl.box_overlaps(det, [[10, 0, 20, 10]])[0, 0] == pytest.approx(11 / 231)  # one shared column of 11
    assert dl.box_overlaps(det, [[10, 0, 20, 10]], pixel_inclusive=False)[0, 0] == 0.0  # continuous: an edge
    # half of a 10 x 10 lesion: 50 / 100 = 0.5 exactly with +1; continuous 9 x 4 in 9 x 9: 36 / 81
    half = dl.box_overlaps([[0, 0, 9, 4]], [[0, 0, 9, 9]])[0, 0]
    assert half == 0.5
    assert dl.box_overlaps([[0, 0, 9, 4]], [[0, 0, 9, 9]], pixel_inclusive=False)[0, 0] == pytest.approx(36 / 81)


# Three images, lesions A, B (image 0) and C (image 1), image 2 without lesion; detections by decreasing score:
# .9 finds A; .85 FP; .8 duplicate on A (neither hit nor FP); .7 FP; .6 inside C with IoU .45 (IoBB 1);
# .5 FP on the lesion-free image; .4 finds B; .3 FP.
GT = [np.array([[10, 10, 30, 30], [50, 50, 70, 70]]), np.array([[0, 0, 20, 20]]), np.zeros((0, 4))]
BOXES = [
    np.array([[10, 10, 30, 30], [12, 12, 32, 32], [100, 100, 110, 110], [50, 50, 70, 70]]),
    np.array([[150, 150, 160, 160], [0, 0, 18, 10], [200, 0, 210, 10]]),
    np.array([[5, 5, 15, 15]]),
]
SCORES = [np.array([0.9, 0.8, 0.7, 0.4]), np.array([0.85, 0.6, 0.3]), np.array([0.5])]


@pytest.mark.parametrize("convention", ["3dce", "reachable"])
def test_froc_by_hand_with_iou(convention):
    result = dl.froc(BOXES, SCORES, GT, convention=convention)
    # thresholds inf .9 .85 .8 .7 .6 .5 .4 .3 -> FPs 0 0 1 1 2 3 4 4 5 (over 3 images), lesions found 0 1 1 1 1 1 1 2 2
    # (the .6 box inside C has IoU 180 / 400 = .45 continuous, 209 / 441 = .47 with +1: a FP in both conventions)
    assert result.curve_fps == pytest.approx(np.array([0, 0, 1, 1, 2, 3, 4, 4, 5]) / 3)
    assert result.curve_sensitivity == pytest.approx(np.array([0, 1, 1, 1, 1, 1, 1, 2, 2]) / 3)
    # 0.5 FP/image: the duplicate at .8 adds no FP, so the threshold goes down to .8 (1 FP over 3 images); 3DCE
    # interpolates from there to the .7 FP at the same sensitivity. 1 FP/image is the .6 FP itself (3 FPs / 3) in
    # both; from 2 FPs/image on, past the curve's end (5 / 3): its last point.
    assert result.thresholds.tolist() == [0.8, 0.6, 0.3, 0.3, 0.3, 0.3]
    assert result.sensitivities == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result.as_dict()["sens@4"] == pytest.approx(2 / 3)
    assert result.num_images == 3 and result.num_lesions == 3
    assert result.detection_is_fp[0].tolist() == [False, False, True, False]  # the duplicate is not a FP


def test_froc_with_iobb_counts_the_detection_inside_the_lesion():
    result = dl.froc(BOXES, SCORES, GT, use_iobb=True, convention="reachable")
    assert result.curve_fps == pytest.approx(np.array([0, 0, 1, 1, 2, 2, 3, 3, 4]) / 3)
    assert result.curve_sensitivity == pytest.approx(np.array([0, 1, 1, 1, 1, 2, 2, 3, 3]) / 3)
    assert result.sensitivities == pytest.approx([1 / 3, 1.0, 1.0, 1.0, 1.0, 1.0])
    # 3DCE: 1 FP/image (3 FPs over 3 images) is first reached by the .5 FP, before B is found at .4: 2 / 3
    # (scipy's interp1d in sens_at_FP takes the first curve point at an FP value the curve reaches exactly)
    result = dl.froc(BOXES, SCORES, GT, use_iobb=True)
    assert result.curve_fps == pytest.approx(np.array([0, 0, 1, 1, 2, 2, 3, 3, 4]) / 3)
    assert result.sensitivities == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0])
    assert result.threshold_at(1.0) == 0.5 and result.threshold_at(0.9) == 0.6


def test_3dce_reads_the_curve_where_it_first_reaches_a_rate_and_interpolates_between_points():
    # two images, one lesion each; by score: .9 FP (image 0), .8 finds it, .7 FP (image 1), .6 finds its lesion.
    # Curve (FPs per image, sensitivity): (0, 0) (.5, 0) (.5, .5) (1, .5) (1, 1).
    gts = [np.array([[0, 0, 9, 9]]), np.array([[0, 0, 9, 9]])]
    boxes = [np.array([[50, 50, 59, 59], [0, 0, 9, 9]]), np.array([[50, 50, 59, 59], [0, 0, 9, 9]])]
    scores = [np.array([0.9, 0.8]), np.array([0.7, 0.6])]
    rates = (0.25, 0.5, 0.75, 1.0, 2.0)
    three_dce = dl.froc(boxes, scores, gts, fp_rates=rates)
    # .25: between (0, 0) and (.5, 0); .5: the .9 FP; .75: between (.5, .5) and (1, .5); 1: the .7 FP; 2: the end
    assert three_dce.sensitivities == pytest.approx([0.0, 0.0, 0.5, 0.5, 1.0])
    assert three_dce.thresholds.tolist() == [np.inf, 0.9, 0.8, 0.7, 0.6]
    reachable = dl.froc(boxes, scores, gts, fp_rates=rates, convention="reachable")
    assert reachable.sensitivities == pytest.approx([0.0, 0.5, 0.5, 1.0, 1.0])
    assert reachable.thresholds.tolist() == [np.inf, 0.8, 0.8, 0.6, 0.6]


def test_conventions_on_ties_iou_of_one_half_and_images_without_lesions():
    # 4 images: 0 with lesions L1, L2; 1 with L3 (20 x 20 pixels); 2 and 3 without lesion. By score:
    # .95 finds L1; .9 FP on image 2; .8 a box on the top half of L3 (IoU 200 / 400 = .5 exactly with +1, a hit;
    # continuous 19 * 9 / (19 * 19) = .47, a FP) tied with .8 FP on image 3; .7 finds L2; .6 FP on image 2.
    gts = [np.array([[0, 0, 9, 9], [20, 20, 29, 29]]), np.array([[0, 0, 19, 19]]), np.zeros((0, 4)), np.zeros((0, 4))]
    boxes = [
        np.array([[0, 0, 9, 9], [20, 20, 29, 29]]),
        np.array([[0, 0, 19, 9]]),
        np.array([[0, 0, 9, 9], [30, 30, 39, 39]]),
        np.array([[5, 5, 9, 9]]),
    ]
    scores = [np.array([0.95, 0.7]), np.array([0.8]), np.array([0.9, 0.6]), np.array([0.8])]
    rates = (0.25, 0.375, 0.5, 1.0)
    # 3DCE: curve (0, 0) (0, 1/3) (.25, 1/3) (.5, 2/3) after the tie at .8 (2 FPs, 1 hit) (.5, 1) (.75, 1).
    # .375 lies halfway across the tie: 1/3 + (2/3 - 1/3) / 2 = 1/2; 1 FP/image is past the end (.75): 1.
    three_dce = dl.froc(boxes, scores, gts, fp_rates=rates)
    assert three_dce.curve_fps == pytest.approx([0, 0, 0.25, 0.5, 0.5, 0.75])
    assert three_dce.curve_sensitivity == pytest.approx(np.array([0, 1, 1, 2, 3, 3]) / 3)
    assert three_dce.sensitivities == pytest.approx([1 / 3, 1 / 2, 2 / 3, 1.0])
    assert three_dce.thresholds.tolist() == [0.9, 0.9, 0.8, 0.6]
    assert three_dce.num_images == 4 and three_dce.num_lesions == 3
    # reachable: the .8 box on L3 is a FP, so the tie adds 2 FPs and no hit: curve (0, 0) (0, 1/3) (.25, 1/3)
    # (.75, 1/3) (.75, 2/3) (1, 2/3)
    reachable = dl.froc(boxes, scores, gts, fp_rates=rates, convention="reachable")
    assert reachable.curve_fps == pytest.approx([0, 0, 0.25, 0.75, 0.75, 1.0])
    assert reachable.sensitivities == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert reachable.thresholds.tolist() == [0.9, 0.9, 0.9, 0.6]
    with pytest.raises(ValueError, match="convention must be one of"):
        dl.froc(boxes, scores, gts, convention="3DCE")
    with pytest.raises(ValueError, match="fp_rates must be > 0"):
        dl.froc(boxes, scores, gts, fp_rates=(0, 1))


def test_past_the_curves_end_the_last_point_even_when_it_is_a_hit():
    # one image, two lesions; .9 FP, .5 finds both (IoU 1 and 100 / 110 with +1): the curve ends on a hit at 1 FP
    gts = [np.array([[0, 0, 9, 9], [0, 0, 10, 9]])]
    result = dl.froc([np.array([[30, 30, 39, 39], [0, 0, 9, 9]])], [np.array([0.9, 0.5])], gts)
    assert result.curve_fps.tolist() == [0.0, 1.0, 1.0]
    # 0.5: between (0, 0) and (1, 0); 1: where the curve first reaches 1 FP, the .9 FP; 2 ... 16: the last point
    assert result.sensitivities == pytest.approx([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_one_detection_finds_every_unfound_lesion_it_overlaps_as_3dce():
    gts = [np.array([[0, 0, 10, 10], [0, 0, 10, 12]])]
    result = dl.froc([np.array([[0, 0, 10, 11]])], [np.array([0.9])], gts)  # IoU .91 and .92 with the two
    assert result.sensitivities[0] == 1.0


def test_equal_scores_are_kept_or_dropped_together():
    gts = [np.array([[0, 0, 10, 10]])]
    boxes = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]])]
    result = dl.froc(boxes, [np.array([0.5, 0.5])], gts, fp_rates=(0.5, 1), convention="reachable")
    assert result.sensitivities.tolist() == [0.0, 1.0]  # the hit cannot be kept without its equal-score FP
    # 3DCE convention: one straight segment from (0 FPs, 0) to (1 FP, 1) across the tie, halfway at 0.5 FP
    result = dl.froc(boxes, [np.array([0.5, 0.5])], gts, fp_rates=(0.5, 1))
    assert result.sensitivities.tolist() == [0.5, 1.0]


def test_no_detection_and_no_lesion():
    assert dl.froc([np.zeros((0, 4))], [np.zeros(0)], [np.array([[0, 0, 5, 5]])]).sensitivities.tolist() == [0.0] * 6
    assert np.isnan(dl.froc([np.zeros((0, 4))], [np.zeros(0)], [np.zeros((0, 4))]).sensitivities).all()
    with pytest.raises(ValueError, match="one entry per image"):
        dl.froc(BOXES, SCORES[:2], GT)
    with pytest.raises(ValueError, match="pred_boxes\\[0\\]: boxes must have x2 >= x1"):
        dl.froc([np.array([[10, 0, 0, 10]])], [np.array([0.5])], [np.zeros((0, 4))])


def test_ap50_hand_worked_cases():
    lesion, elsewhere = [0, 0, 9, 9], [50, 50, 59, 59]
    assert dl.average_precision([[lesion], [elsewhere]], [[0.9], [0.4]], [[lesion], [elsewhere]]) == 1.0  # perfect
    # one FP ranked above the only TP: precision 1/2 at recall 1 -> AP 0.5
    assert dl.average_precision([[elsewhere, lesion]], [[0.9, 0.8]], [[lesion]]) == pytest.approx(0.5)
    # TP, FP, TP on 2 lesions: recall 1/2 at precision 1, recall 1 at precision 2/3 -> 1/2 + 1/2 * 2/3
    ap = dl.average_precision([[lesion, [30, 30, 39, 39]], [elsewhere]], [[0.9, 0.8], [0.7]], [[lesion], [elsewhere]])
    assert ap == pytest.approx(5 / 6)
    # a second detection of a found lesion is a FP (VOC); it ranks above the other lesion's hit
    ap = dl.average_precision([[lesion, lesion], [elsewhere]], [[0.9, 0.8], [0.7]], [[lesion], [elsewhere]])
    assert ap == pytest.approx(5 / 6)
    assert dl.average_precision([[], []], [[], []], [[lesion], []]) == 0.0  # no detections
    assert np.isnan(dl.average_precision([[lesion]], [[0.9]], [[]]))  # no lesion
    # a 10 x 5 box on half of a 10 x 10 lesion: IoU 0.5 with +1 pixels (a hit), 36 / 81 continuous (a miss)
    assert dl.average_precision([[[0, 0, 9, 4]]], [[0.9]], [[lesion]]) == 1.0
    assert dl.average_precision([[[0, 0, 9, 4]]], [[0.9]], [[lesion]], pixel_inclusive=False) == 0.0


def test_table2_threshold_from_all_images_then_sensitivity_per_group():
    result = dl.froc(BOXES, SCORES, GT)
    # at 1 FP/image the threshold is .6: only A is found. A: lung, 8 mm; B: liver, 20 mm (same image, interval
    # 1 mm); C: lung, 40 mm (interval 5 mm).
    table = dl.table2_sensitivities(result, [[5, 4], [5], []], [[8.0, 20.0], [40.0], []], [1.0, 5.0, 2.5], fp_rate=1)
    assert list(table) == ["LU", "ME", "LV", "ST", "PV", "AB", "KD", "BN", "<10mm", "10-30mm", ">30mm"] + [
        "<2.5mm",
        ">=2.5mm",
    ]
    assert {k: v for k, v in table.items() if not np.isnan(v)} == {
        "LU": 0.5,
        "LV": 0.0,
        "<10mm": 1.0,
        "10-30mm": 0.0,
        ">30mm": 0.0,
        "<2.5mm": 0.5,
        ">=2.5mm": 0.0,
    }
    # at 4 FPs/image (threshold .3) B is found too, and image 1 alone would not change the threshold
    at4 = dl.table2_sensitivities(result, [[5, 4], [5], []], [[8.0, 20.0], [40.0], []], [1.0, 5.0, 2.5])
    assert at4["LV"] == 1.0 and at4["LU"] == 0.5 and at4["<2.5mm"] == 1.0
    assert dl.type_group(-1) is None and dl.diameter_group(10.0) == dl.diameter_group(30.0) == "10-30mm"


def test_detection_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "out" / "detections.json"
    entries = [{"series": "000001_01_01", "slice": 109, "box": [1, 2, 30, 40], "score": 0.93, "world": [1, 2, 3]}]
    dl.write_detections(path, entries)
    assert dl.read_detections(path) == [{**entries[0], "box": [1.0, 2.0, 30.0, 40.0]}]
    path.write_text(json.dumps({"detections": [entries[0], {"series": "x", "slice": 3, "box": [0, 0, 1], "score": 1}]}))
    with pytest.raises(ValueError, match="detections.json: detection 1: box .* must be finite"):
        dl.read_detections(path)
    path.write_text(json.dumps({"detections": [{"series": "x", "box": [0, 0, 1, 1], "score": 1}]}))
    with pytest.raises(ValueError, match="detection 0: .* needs series \\(str\\), slice \\(int\\)"):
        dl.read_detections(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match='expected a JSON object {"detections": \\[...\\]}'):
        dl.read_detections(path)


def _row(series: str, key: int, box, lesion_type: int, long_px: float, interval: float, split: int, noisy=0) -> dict:
    patient, study, series_id = (int(p) for p in series.split("_"))
    x1, y1, x2, y2 = box
    values = {
        "File_name": f"{series}_{key:03d}.png",
        "Patient_index": patient,
        "Study_index": study,
        "Series_ID": series_id,
        "Key_slice_index": key,
        "Measurement_coordinates": [x1, y1, x2, y2, x1, y2, x2, y1],
        "Bounding_boxes": list(box),
        "Lesion_diameters_Pixel_": [long_px, long_px / 2],
        "Normalized_lesion_location": [0.5, 0.5, 0.5],
        "Coarse_lesion_type": lesion_type,
        "Possibly_noisy": noisy,
        "Slice_range": [key - 2, key + 2],
        "Spacing_mm_px_": [0.5, 0.5, interval],
        "Image_size": [128, 128],
        "DICOM_windows": [-175, 275],
        "Patient_gender": "F",
        "Patient_age": 50,
        "Train_Val_Test": split,
    }
    return {k: ", ".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in values.items()}


@pytest.fixture()
def deeplesion_root(tmp_path):
    """DL_info.csv: test key slices 000001_01_01/010 (lung 10 mm, bone 40 mm; 1 mm slices) and 000002_01_01/020
    (liver 20 mm; 5 mm), one noisy-only test key slice, one validation key slice. Boxes in 1-based pixels."""
    root = tmp_path / "deeplesion"
    (root / "Images_png").mkdir(parents=True)
    rows = [
        _row("000001_01_01", 10, (11, 11, 31, 31), 5, 20, 1.0, 3),
        _row("000001_01_01", 10, (61, 61, 101, 101), 1, 80, 1.0, 3),
        _row("000002_01_01", 20, (21, 21, 61, 61), 4, 40, 5.0, 3),
        _row("000003_01_01", 30, (11, 11, 21, 21), 7, 10, 1.0, 3, noisy=1),
        _row("000004_01_01", 40, (11, 11, 21, 21), 7, 10, 1.0, 2),
    ]
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_key_slices_group_rows_drop_noisy_ones_and_make_boxes_0_based(deeplesion_root):
    from shared.data.deeplesion import read_annotations

    truth = dl.key_slices(read_annotations(deeplesion_root), "test")
    assert [(k.series, k.slice) for k in truth] == [("000001_01_01", 10), ("000002_01_01", 20)]
    first = truth[0]
    assert first.boxes == [[10, 10, 30, 30], [60, 60, 100, 100]]
    assert first.types == [5, 1] and first.diameters_mm == [10.0, 40.0] and first.slice_interval_mm == 1.0
    assert [k.series for k in dl.key_slices(read_annotations(deeplesion_root), "validation")] == ["000004_01_01"]


def test_evaluate_dir_perfect_then_one_lesion_missed(deeplesion_root, tmp_path):
    pred_dir = tmp_path / "pred"
    exact = [
        {"series": "000001_01_01", "slice": 10, "box": [10, 10, 30, 30], "score": 0.9},  # 0-based = CSV - 1
        {"series": "000001_01_01", "slice": 10, "box": [60, 60, 100, 100], "score": 0.8},
        {"series": "000002_01_01", "slice": 20, "box": [20, 20, 60, 60], "score": 0.7},
        {"series": "000001_01_01", "slice": 11, "box": [0, 0, 9, 9], "score": 0.99},  # not a key slice: ignored
        {"series": "000003_01_01", "slice": 30, "box": [10, 10, 20, 20], "score": 0.99},  # noisy-only: ignored
    ]
    dl.write_detections(pred_dir / "detections.json", exact)
    table = dl.evaluate_dir(pred_dir, deeplesion_root)
    assert table.summary["images"] == 2 and table.summary["lesions"] == 3
    assert table.summary["detections_ignored"] == 2
    assert all(table.summary[f"sens@{r:g}"] == 1.0 for r in dl.FP_RATES) and table.summary["ap50"] == 1.0
    assert table.rows[0] == {"series": "000001_01_01", "slice": 10, "lesions": 2, "found@4": 2, "fp@4": 0}
    # the bone lesion's detection moved off it: a FP at .8, the lesion missed
    exact[1]["box"] = [100, 100, 120, 120]
    dl.write_detections(pred_dir / "detections.json", exact)
    reachable = dl.evaluate_dir(pred_dir, deeplesion_root, convention="reachable")
    assert reachable.summary["sens@0.5"] == pytest.approx(2 / 3)  # 1 FP over 2 images = 0.5 FP per image
    # 3DCE: 0.5 FP per image is first reached by the .8 FP itself, before the liver lesion is found at .7
    table = dl.evaluate_dir(pred_dir, deeplesion_root)
    assert table.summary["sens@0.5"] == pytest.approx(1 / 3)
    assert table.summary["sens@1"] == pytest.approx(2 / 3)  # past the curve's end (0.5): its last point
    assert table.summary["ap50"] == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)  # TP .9, FP .8, TP .7 of 3 lesions
    assert "3DCE convention" in table.title and "reachable convention" in reachable.title
    assert table.rows[0]["found@4"] == 1 and table.rows[0]["fp@4"] == 1
    assert table.summary["sens@4_BN"] == 0.0 and table.summary["sens@4_LU"] == 1.0
    assert table.summary["sens@4_>30mm"] == 0.0 and table.summary["sens@4_10-30mm"] == 1.0
    assert table.summary["sens@4_<2.5mm"] == 0.5 and table.summary["sens@4_>=2.5mm"] == 1.0
    assert np.isnan(table.summary["sens@4_ST"])
    off_lesion = {"series": "000004_01_01", "slice": 40, "box": [90, 90, 100, 100], "score": 0.5}
    dl.write_detections(pred_dir / "detections.json", [*exact, off_lesion])
    validation = dl.evaluate_dir(pred_dir, deeplesion_root, split="val")  # detections of other splits: ignored
    assert validation.summary["images"] == 1 and validation.summary["detections_ignored"] == len(exact)
    assert validation.summary["sens@16"] == 0.0


def test_evaluate_dir_errors(deeplesion_root, tmp_path):
    with pytest.raises(ValueError, match="detections.json: not found"):
        dl.evaluate_dir(tmp_path, deeplesion_root)
    dl.write_detections(
        tmp_path / "detections.json", [{"series": "1_1_1", "slice": 1, "box": [0, 0, 1, 1], "score": 1}]
    )
    with pytest.raises(
        ValueError,
        match="detections.json: none of its 1 detections is on an evaluated key slice .* '000001_01_01' slice 10",
    ):
        dl.evaluate_dir(tmp_path, deeplesion_root)
    with pytest.raises(ValueError, match="unknown split 'testing'"):
        dl.evaluate_dir(tmp_path, deeplesion_root, split="testing")


def test_cli_prints_the_table(deeplesion_root, tmp_path, repo_root):
    dl.write_detections(
        tmp_path / "detections.json", [{"series": "000002_01_01", "slice": 20, "box": [20, 20, 60, 60], "score": 0.7}]
    )
    command = [sys.executable, "-m", "shared", "evaluate", "deeplesion", str(tmp_path), str(deeplesion_root)]
    done = subprocess.run([*command, "--use_iobb"], cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "000002_01_01" in done.stdout and "IoBB" in done.stdout
    assert [line.split()[-1] for line in done.stdout.splitlines() if line.startswith("sens@4 ")] == ["0.3333"]
    done = subprocess.run([*command, "--no_such_option", "1"], cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 2 and "no_such_option" in done.stderr


def test_cli_reports_the_3dce_convention_by_default_and_reachable_on_request(deeplesion_root, tmp_path, repo_root):
    # lung lesion found at .9, a FP at .8 on the same key slice, liver lesion found at .7; 3 lesions on 2 key slices
    dl.write_detections(
        tmp_path / "detections.json",
        [
            {"series": "000001_01_01", "slice": 10, "box": [10, 10, 30, 30], "score": 0.9},
            {"series": "000001_01_01", "slice": 10, "box": [100, 100, 120, 120], "score": 0.8},
            {"series": "000002_01_01", "slice": 20, "box": [20, 20, 60, 60], "score": 0.7},
        ],
    )
    command = [sys.executable, "-m", "shared", "evaluate", "deeplesion", str(tmp_path), str(deeplesion_root)]

    def sens(stdout: str, rate: str) -> str:
        return next(line.split()[-1] for line in stdout.splitlines() if line.startswith(f"sens@{rate} "))

    default = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert default.returncode == 0, default.stderr
    assert "3DCE convention: +1 pixel boxes, FROC interpolated as sens_at_FP" in default.stdout.splitlines()[0]
    assert sens(default.stdout, "0.5") == "0.3333" and sens(default.stdout, "1") == "0.6667"
    ap50 = [line.split()[-1] for line in default.stdout.splitlines() if line.startswith("ap50 ")]
    assert ap50 == ["0.5556"]  # TP .9, FP .8, TP .7 of 3 lesions: 1/3 * 1 + 1/3 * 2/3
    reachable = subprocess.run([*command, "--convention", "reachable"], cwd=repo_root, capture_output=True, text=True)
    assert reachable.returncode == 0, reachable.stderr
    assert "reachable convention" in reachable.stdout.splitlines()[0]
    assert sens(reachable.stdout, "0.5") == "0.6667"
    wrong = subprocess.run([*command, "--convention", "paper"], cwd=repo_root, capture_output=True, text=True)
    assert wrong.returncode == 1 and "convention must be one of ('3dce', 'reachable'), got 'paper'" in wrong.stderr


def test_ignite_metric_equals_froc():
    from shared.metrics.froc_metric import DeepLesionFROCMetric

    def step(engine, batch):
        images = range(batch, min(batch + 2, 3))  # batches of two images: 0-1, then 2
        predictions = [{"boxes": torch.tensor(BOXES[i]), "scores": torch.tensor(SCORES[i])} for i in images]
        return predictions, [{"boxes": torch.tensor(GT[i])} for i in images]

    engine = Engine(step)
    metric = DeepLesionFROCMetric()
    metric.attach(engine, "froc")
    engine.run([0, 2], max_epochs=1)
    expected = dl.froc(BOXES, SCORES, GT).as_dict()
    assert engine.state.metrics["froc"] == pytest.approx(expected["sens@4"])
    assert {rate: engine.state.metrics[f"froc@{rate:g}"] for rate in dl.FP_RATES} == pytest.approx(
        {rate: expected[f"sens@{rate:g}"] for rate in dl.FP_RATES}
    )


def test_ignite_metric_uses_the_3dce_convention_by_default():
    from shared.metrics.froc_metric import DeepLesionFROCMetric

    # the IoBB case above at 1 FP per image: 2/3 in 3DCE's reading of the curve, 1 at the reachable point
    def step(engine, batch):
        predictions = [{"boxes": torch.tensor(BOXES[i]), "scores": torch.tensor(SCORES[i])} for i in range(3)]
        return predictions, [{"boxes": torch.tensor(GT[i])} for i in range(3)]

    for kwargs, expected in (({}, 2 / 3), ({"convention": "reachable"}, 1.0)):
        engine = Engine(step)
        DeepLesionFROCMetric(key_fp_rate=1.0, use_iobb=True, **kwargs).attach(engine, "froc")
        engine.run([0], max_epochs=1)
        assert engine.state.metrics["froc"] == pytest.approx(expected)
