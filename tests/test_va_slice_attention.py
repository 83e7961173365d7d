"""benchmarks/va_slice_attention.py: the VA blocks' slice weights are recorded while the wrapper is on and the class
is restored after; the summary's target and far weights equal those worked out by hand."""

from collections import defaultdict

import numpy as np
import pytest
import torch

from benchmarks.va_slice_attention import recorded_slice_weights, summarize
from shared.networks.blocks.volumetric_attention import VolumetricAttention


def test_recording_keeps_each_blocks_softmax_and_restores_the_class():
    originals = (VolumetricAttention.channel_attention, VolumetricAttention.spatial_attention)
    block = VolumetricAttention(2, 32)
    bag = torch.rand(2, 5, 32, 8, 8)
    weights = defaultdict(list)
    with torch.no_grad():
        expected = block(bag)
        with recorded_slice_weights(weights):
            out = block(bag)
    torch.testing.assert_close(out, expected)  # recording changes nothing
    assert set(weights) == {(block, "channel"), (block, "spatial")}
    for (_, _), (att,) in weights.items():
        assert att.shape == (2, 5) and np.allclose(att.sum(1), 1.0)
    assert (VolumetricAttention.channel_attention, VolumetricAttention.spatial_attention) == originals
    block(bag)
    assert all(len(batches) == 1 for batches in weights.values())  # nothing recorded after the block


def test_summary_by_hand():
    block = object()
    att = np.array([[0.1, 0.1, 0.6, 0.1, 0.1], [0.0, 0.2, 0.4, 0.2, 0.2]])
    (row,) = summarize({(block, "spatial"): [att[:1], att[1:]]}, {block: "0"})
    assert (row["level"], row["attention"], row["targets"]) == ("0", "spatial", 2)
    assert row["target_weight"] == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert row["far_weight"] == pytest.approx(0.2)  # images 0 and 4: (0.2 + 0.2) / 2
    assert row["uniform_far_weight"] == pytest.approx(0.4)  # 2 of 5
