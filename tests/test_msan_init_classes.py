"""What the untrained MSAN members call each voxel (benchmarks/msan_init_classes.py), by hand."""

import math

import pytest
import torch

from benchmarks import msan_init_classes as init_classes


def test_class_shares_count_the_arg_max_and_average_the_softmax():
    # 3 classes over 4 positions: class 1 wins at positions 0-2, class 2 at position 3, class 0 nowhere
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    shares = init_classes.class_shares(logits)
    assert shares["argmax_share"] == pytest.approx([0.0, 0.75, 0.25])
    e = math.e
    low, high = 1 / (2 + e), e / (2 + e)  # softmax of (0, 1, 0): the two losers, the winner
    assert shares["mean_probability"] == pytest.approx([low, (3 * high + low) / 4, (3 * low + high) / 4])


def test_untrained_classes_pair_the_arms_at_a_seed(tmp_path):
    import nibabel as nib
    import numpy as np

    case = tmp_path / "case_00000"
    case.mkdir()
    hu = np.random.default_rng(0).normal(40, 200, (16, 16, 8)).astype(np.float32)
    nib.Nifti1Image(hu, np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(case / "imaging.nii.gz")
    nib.Nifti1Image(np.zeros(hu.shape, np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(
        case / "segmentation.nii.gz"
    )
    rows = init_classes.untrained_classes(case, ["v1", "v1_ds"], [0, 1])
    by = {(r["arm"], r["seed"]): r for r in rows}
    # deep supervision adds heads the evaluated output does not use: paired weights give the same prediction
    assert by["v1", 0]["mean_probability"] == pytest.approx(by["v1_ds", 0]["mean_probability"])
    assert by["v1", 0]["mean_probability"] != pytest.approx(by["v1", 1]["mean_probability"])
