"""The per-object reading of VA's spatial gate (benchmarks/va_gate_objects.py), by hand."""

import numpy as np
import pytest
import torch

from benchmarks import va_gate_objects as gates
from shared.networks.va_rcnn import build_va_mask_rcnn

GATE = np.array([[1.0, 2.0], [3.0, 4.0]])


def test_object_gate_weights_each_cell_by_the_share_the_object_covers():
    corner = np.zeros((4, 4), bool)
    corner[:2, :2] = True  # all of cell (0, 0)
    assert gates.object_gate(GATE, corner) == pytest.approx(1.0)
    strip = np.zeros((4, 4), bool)
    strip[0, :] = True  # half of cells (0, 0) and (0, 1)
    assert gates.object_gate(GATE, strip) == pytest.approx(1.5)
    odd = np.zeros((4, 4), bool)
    odd[0, 0] = odd[3, 3] = True  # a quarter of cell (0, 0) and of cell (1, 1)
    assert gates.object_gate(GATE, odd) == pytest.approx(2.5)


def test_gate_ratios_divide_by_the_liver_mean():
    corner = np.zeros((4, 4), bool)
    corner[:2, :2] = True
    ratios = gates.gate_ratios({"0": GATE}, [corner, ~corner], np.ones((4, 4), bool))
    assert ratios["0"] == pytest.approx([1.0 / 2.5, 3.0 / 2.5])


def test_volume_summary_pairs_lookalikes_with_the_lesions_beside_them():
    volume = {"objects": ["lesion", "lookalike", "lesion"], "ratios": {"0": [1.0, 0.8, 0.9]}}
    assert gates.summarize_volume(volume)["0"] == pytest.approx(
        {"lesion": 0.95, "lookalike": 0.8, "lookalike_minus_lesion": -0.15}
    )
    alone = gates.summarize_volume({"objects": ["lesion"], "ratios": {"0": [1.1]}})["0"]
    assert alone == {"lesion": 1.1, "lookalike": None, "lookalike_minus_lesion": None}


def test_spatial_gates_read_every_level_and_leave_the_blocks_as_they_were():
    torch.manual_seed(0)
    network = build_va_mask_rcnn(
        bag_size=3, backbone="resnet18", fpn_channels=16, min_size=64, max_size=64, gate_norm=True
    ).eval()
    bag = torch.rand(1, 9, 64, 64)
    with torch.no_grad():
        features = network.backbone(bag)
    read = gates.spatial_gates(network, bag)
    assert set(read) == set(network.backbone.attention.keys())
    for level, gate in read.items():
        assert gate.shape == tuple(features[level].shape[-2:])
        assert gate.mean() == pytest.approx(1.0, abs=1e-4)  # gate_norm: the gate divided by its mean
    assert all("spatial_attention" not in block.__dict__ for block in network.backbone.attention.values())
    with torch.no_grad():
        again = network.backbone(bag)
    assert all(torch.equal(again[k], features[k]) for k in features)
