"""benchmarks/csatt_spatial_channels.py: the per-channel reading of S'' in and outside a box, and the false boxes
kept at an operating point, on maps and detections built by hand."""

import numpy as np
import pytest
import torch

from benchmarks import csatt_spatial_channels as channels


def test_box_mask_covers_the_cells_a_box_overlaps():
    assert channels.box_mask([0, 0, 7, 7], (4, 4)).sum() == 1
    mask = channels.box_mask([4, 4, 12, 12], (4, 4))
    assert mask[:2, :2].all() and mask.sum() == 4


def test_channel_preference_reads_each_channel_in_and_outside_the_box():
    inside = np.zeros((4, 4), dtype=bool)
    inside[:2, :2] = True  # 4 of 16 cells
    maps = np.ones((4, 4, 4), dtype=np.float32)
    maps[0][inside] = 2.0  # ratio 2, peak in the box
    maps[1][3, 3] = 3.0  # ratio 1 / (14 / 12), peak outside
    maps[2][inside] = 0.5  # ratio 0.5, peak outside
    maps[3][inside] = 4.0  # ratio 4, peak in the box
    got = channels.channel_preference(maps, inside)
    assert got["median_ratio"] == pytest.approx((12 / 14 + 2.0) / 2)
    assert got["share_above_1"] == 0.5 and got["share_peaks_in_box"] == 0.5
    assert got["chance_peaks_in_box"] == 0.25
    # channel mean: 1.875 in every box cell; outside 1 except (3, 3), (1 + 3 + 1 + 1) / 4
    assert got["channel_mean_ratio"] == pytest.approx(1.875 / ((11 + 1.5) / 12))


def test_false_boxes_are_kept_boxes_that_hit_no_lesion():
    truth = np.array([[10.0, 10.0, 30.0, 30.0]])
    detection = {
        "boxes": torch.tensor([[11.0, 11.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0], [70.0, 70.0, 80.0, 80.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.1]),
    }
    assert channels.false_boxes(detection, truth, threshold=0.5) == [[50.0, 50.0, 60.0, 60.0]]
    assert len(channels.false_boxes(detection, np.zeros((0, 4)), threshold=0.05)) == 3
