"""How often VA's training is shown look-alikes (benchmarks/va_lookalike_share.py), by hand."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import va_lookalike_share as share


def test_slice_counts_split_liver_objects_into_lesions_and_lookalikes_and_weigh_by_thickness():
    lesions = np.zeros((4, 4, 3), np.uint8)
    lesions[0, 0, 0] = 1  # object 0: a lesion, slice 0
    lesions[1, :2, 1] = 2  # object 1: a look-alike, 2 pixels on slice 1
    lesions[2, 2, 2] = 3  # object 2: a kidney lesion, not counted
    objects = [SimpleNamespace(site="liver"), SimpleNamespace(site="liver"), SimpleNamespace(site="kidney")]
    phantom = SimpleNamespace(lesions=lesions, lesion_list=objects, affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    counts = share.slice_counts(phantom, {1})
    assert counts["lesion_px"].tolist() == [1, 0, 0]
    assert counts["lookalike_px"].tolist() == [0, 2, 0]
    assert counts["weight"].tolist() == [2.0, 2.0, 2.0]  # 3 mm slices read as two 1.5 mm slices each


def test_sampled_share_weighs_lesion_slices_by_the_oversampling():
    # 4 slices of equal thickness: lesion only, look-alike only, both, neither
    volume = {
        "lesion_px": np.array([3, 0, 1, 0]),
        "lookalike_px": np.array([0, 2, 1, 0]),
        "weight": np.ones(4),
    }
    uniform = share.sampled_share([volume], 1.0)
    assert uniform == pytest.approx(
        {
            "slices_with_lesion": 0.5,
            "slices_with_lookalike": 0.5,
            "slices_with_both": 0.25,
            "lookalike_share_of_lesion_like_px": 3 / 7,
        }
    )
    # oversampling 4: weights 4, 1, 4, 1 -> probabilities 0.4, 0.1, 0.4, 0.1
    over = share.sampled_share([volume], 4.0)
    assert over["slices_with_lesion"] == pytest.approx(0.8)
    assert over["slices_with_lookalike"] == pytest.approx(0.5)
    assert over["slices_with_both"] == pytest.approx(0.4)
    # lesion pixels 0.4 * 3 + 0.4 * 1 = 1.6, look-alike pixels 0.1 * 2 + 0.4 * 1 = 0.6
    assert over["lookalike_share_of_lesion_like_px"] == pytest.approx(0.6 / 2.2)
