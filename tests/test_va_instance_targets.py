"""Instance targets from a hand-made label slice: connected components -> boxes, labels, masks."""

import numpy as np
import pytest
import torch

from shared.transforms.instance_targets import InstanceTargetsd, instance_targets


def _slice() -> np.ndarray:
    """10 x 12 slice: liver rows 1-8, cols 1-10; lesion A rows 2-3, cols 2-4; lesion B the single pixel (6, 8)."""
    label = np.zeros((10, 12), dtype=np.uint8)
    label[1:9, 1:11] = 1
    label[2:4, 2:5] = 2
    label[6, 8] = 2
    return label


def test_two_lesions_and_the_liver_give_three_instances():
    out = instance_targets(_slice())
    order = torch.argsort(out["labels"] * 100 + out["boxes"][:, 0])  # liver first, then lesions left to right
    boxes, labels, masks = out["boxes"][order], out["labels"][order], out["masks"][order]
    assert labels.tolist() == [1, 2, 2]
    # [x1, y1, x2, y2]: x = column, y = row, exclusive ends
    assert boxes.tolist() == [[1, 1, 11, 9], [2, 2, 5, 4], [8, 6, 9, 7]]
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and masks.dtype == torch.uint8
    assert masks.shape == (3, 10, 12)
    assert masks[0].sum() == 80  # the liver instance includes its lesions (LiTS liver = label >= 1)
    assert masks[1].sum() == 6 and masks[2].sum() == 1 and masks[2][6, 8] == 1


def test_diagonal_pixels_are_one_component_and_min_area_filters():
    label = np.zeros((6, 6), dtype=np.uint8)
    label[1, 1] = label[2, 2] = 2  # diagonal neighbours: 8-connected
    label[4, 4] = 2
    lesions = {2: (2,)}
    out = instance_targets(label, lesions)
    assert sorted(out["boxes"].tolist()) == [[1, 1, 3, 3], [4, 4, 5, 5]]
    assert instance_targets(label, lesions, min_area=2)["boxes"].tolist() == [[1, 1, 3, 3]]


def test_empty_slice_gives_zero_instances_with_the_right_shapes():
    out = instance_targets(np.zeros((1, 7, 5), dtype=np.uint8))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["masks"].shape == (0, 7, 5)


def test_dictionary_transform_accepts_config_style_regions():
    data = {"image": torch.zeros(9, 10, 12), "label": torch.from_numpy(_slice())[None]}
    out = InstanceTargetsd("label", regions={"1": [1, 2], "2": [2]})(data)
    assert sorted(out["labels"].tolist()) == [1, 2, 2]
    assert out["image"] is data["image"]
    with pytest.raises(ValueError, match="label slice"):
        instance_targets(np.zeros((2, 3, 4)))
