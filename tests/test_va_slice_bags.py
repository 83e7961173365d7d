"""2.5D slice bags: z order, target in the middle, edge replication, agreement with the backbone's image offsets."""

import numpy as np
import pytest
import torch

from shared.transforms.slice_bags import SliceBagd, bag_slice_indices, image_slice_indices


def test_bag_indices_are_contiguous_in_z_order_around_the_target():
    assert bag_slice_indices(10, 30, 3).tolist() == list(range(6, 15))
    assert bag_slice_indices(15, 40, 9).tolist() == list(range(2, 29))  # 27 slices (Table 2f: 3 x 9)
    assert bag_slice_indices(4, 9, 1).tolist() == [3, 4, 5]


def test_edges_and_short_volumes_replicate_the_edge_slice():
    assert bag_slice_indices(0, 20, 3).tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4]
    assert bag_slice_indices(19, 20, 3).tolist() == [15, 16, 17, 18, 19, 19, 19, 19, 19]
    assert bag_slice_indices(1, 2, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # -3..5 clamped to 0..1
    assert image_slice_indices(-3, 5).tolist() == [0, 0, 0]
    assert image_slice_indices(5, 5).tolist() == [4, 4, 4]


@pytest.mark.parametrize("bag_size", [1, 3, 9])
def test_bag_is_the_concatenation_of_the_backbones_images(bag_size):
    # VABackbone reads images centred at 3 (k - N // 2) slices from the target
    for target, depth in [(0, 7), (3, 7), (6, 7), (20, 50)]:
        centres = [target + 3 * (k - bag_size // 2) for k in range(bag_size)]
        images = np.concatenate([image_slice_indices(c, depth) for c in centres])
        assert images.tolist() == bag_slice_indices(target, depth, bag_size).tolist()


def test_slice_bag_transform_reads_memory_mapped_volumes(tmp_path):
    depth, h, w = 6, 4, 5
    volume = np.broadcast_to(np.arange(depth, dtype=np.float32)[:, None, None], (depth, h, w)).copy()
    label = np.zeros((depth, h, w), dtype=np.uint8)
    label[2, 1, 1] = 2
    np.save(tmp_path / "image.npy", volume)
    np.save(tmp_path / "label.npy", label)
    item = {"image": str(tmp_path / "image.npy"), "label": str(tmp_path / "label.npy"), "slice": 2, "case": "c"}
    out = SliceBagd(bag_size=3)(item)
    assert out["image"].shape == (9, h, w) and out["image"].dtype == torch.float32
    assert out["image"][:, 0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 5]
    assert out["label"].shape == (1, h, w) and out["label"][0, 1, 1] == 2
    with pytest.raises(IndexError, match="slice 6 outside a volume of 6 slices"):
        SliceBagd(bag_size=3)({**item, "slice": 6})
    with pytest.raises(ValueError, match="odd"):
        SliceBagd(bag_size=2)
