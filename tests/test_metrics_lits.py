"""LiTS scoring: per-case and global Dice, lesion Dice by size class, the MONAI wrapper, evaluate_dir and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.metrics import lits
from shared.metrics.dice_metric import LiTSDiceMetric
from shared.phantoms.ct import nifti, reorient

SPACING = (0.7, 0.7, 2.0)


def test_per_case_dice_rules():
    empty = np.zeros((4, 4, 2), np.int16)
    lesion = empty.copy()
    lesion[1, 1, 0] = 2
    assert lits.score_case(empty, empty, SPACING).dice == {"lesion": 1.0, "liver": 1.0}  # both empty
    assert lits.score_case(lesion, empty, SPACING).dice == {"lesion": 0.0, "liver": 0.0}  # only reference empty
    assert lits.score_case(empty, lesion, SPACING).dice == {"lesion": 0.0, "liver": 0.0}  # prediction empty
    liver = np.ones((4, 4, 2), np.int16)
    # the lesion predicted as liver: liver region (label >= 1) still perfect, lesion Dice 0
    assert lits.score_case(liver, np.where(lesion == 2, 2, 1), SPACING).dice == {"lesion": 0.0, "liver": 1.0}


def test_global_dice_pools_voxels_unlike_the_mean_of_cases():
    small_ref = np.zeros((10, 10, 1), np.int16)
    small_ref[:10, :1] = 2  # 10 lesion voxels, found exactly
    big_ref = np.zeros((10, 10, 1), np.int16)
    big_ref[:9, :10] = 2  # 90 lesion voxels, all missed
    cases = [lits.score_case(small_ref, small_ref, SPACING), lits.score_case(np.zeros_like(big_ref), big_ref, SPACING)]
    summary = lits.summarize(cases)
    assert summary["lesion_dice_per_case"] == pytest.approx(0.5)
    assert summary["lesion_dice_global"] == pytest.approx(2 * 10 / (10 + 100))


@pytest.mark.parametrize(
    ("diameter", "expected"), [(14.99, "small"), (15.0, "medium"), (30.0, "medium"), (30.01, "large")]
)
def test_size_class_boundaries(diameter, expected):
    assert lits.size_class(diameter) == expected


def test_longest_axial_diameter_of_boxes_and_a_sphere():
    box = np.zeros((30, 30, 5), bool)
    box[2:12, 5:30, 1:3] = True  # 10 x 25 pixels
    assert lits.longest_axial_diameter(box, SPACING) == pytest.approx(np.hypot(10 * 0.7, 25 * 0.7))
    box[2:20, 5:6, 4] = True  # a shorter extent on another slice (18 x 1 pixels) changes nothing
    assert lits.longest_axial_diameter(box, SPACING) == pytest.approx(np.hypot(10 * 0.7, 25 * 0.7))
    box[0:30, 0:30, 0] = True
    assert lits.longest_axial_diameter(box, SPACING) == pytest.approx(np.hypot(21, 21))
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip((60, 60, 20), SPACING)), indexing="ij")
    sphere = (x - 21) ** 2 + (y - 21) ** 2 + (z - 20) ** 2 <= 12.0**2
    # pixel corners around the voxel centres inside radius 12 mm: between 24 mm and 24 mm + a pixel diagonal
    assert 24.0 <= lits.longest_axial_diameter(sphere, SPACING) <= 24.0 + 0.7 * np.sqrt(2)


def _lesion_volume() -> tuple[np.ndarray, dict[str, tuple]]:
    """RAS labels (liver 1, lesions 2) holding a small, a medium and a large box lesion (spacing 0.7, 0.7, 2 mm)."""
    labels = np.zeros((100, 100, 8), np.int16)
    labels[2:98, 2:98, 1:7] = 1
    boxes = {
        "small": np.s_[5:15, 5:15, 2:4],  # 10 x 10 px: 9.9 mm
        "medium": np.s_[30:50, 5:30, 2:6],  # 20 x 25 px: 22.4 mm
        "large": np.s_[40:90, 40:90, 2:6],  # 50 x 50 px: 49.5 mm
    }
    for box in boxes.values():
        labels[box] = 2
    return labels, boxes


def test_lesion_dice_by_size_with_a_split_and_spilling_prediction():
    ref, boxes = _lesion_volume()
    pred = np.where(ref > 0, 1, 0).astype(np.int16)
    pred[boxes["small"]] = 2  # exact
    pred[30:50, 5:30, 2:4] = 2  # medium: half of its 4 slices...
    pred[30:50, 30:33, 2:3] = 2  # ...plus a spill of 60 voxels outside it, connected
    pred[60:62, 10:12, 3] = 2  # a false positive elsewhere: does not lower any lesion's Dice
    lesions = sorted(lits.lesion_dices(pred == 2, ref == 2, SPACING))
    medium_voxels = 20 * 25 * 4
    expected = {
        "small": 1.0,
        "medium": 2 * (medium_voxels / 2) / (medium_voxels / 2 + 60 + medium_voxels),
        "large": 0.0,  # missed
    }
    assert [lits.size_class(d) for d, _ in lesions] == ["small", "medium", "large"]
    assert [d for d, _ in lesions] == pytest.approx([np.hypot(7, 7), np.hypot(14, 17.5), np.hypot(35, 35)])
    assert lits.mean_dice_by_size(lesions) == pytest.approx(expected)
    no_large = lits.mean_dice_by_size(lesions[:2])
    assert np.isnan(no_large["large"])


def test_lesions_touching_at_a_corner_are_one_lesion():
    ref = np.zeros((6, 6, 6), bool)
    ref[0:2, 0:2, 0:2] = True
    ref[2:4, 2:4, 2:4] = True  # shares only a corner with the first cube: joined by 26-connectivity
    assert len(lits.lesion_dices(np.zeros_like(ref), ref, (1, 1, 1))) == 1


def test_wrapper_gives_lesion_dice_per_case():
    ref = torch.zeros(2, 1, 4, 4, 4)
    ref[:, 0, 1:3] = 1
    ref[0, 0, 1, 1:3, 1:3] = 2  # 4 lesion voxels in case 0; case 1 has no lesion
    pred = ref.clone()
    pred[0, 0, 1, 1, 1:3] = 1  # 2 of them missed
    metric = LiTSDiceMetric()
    metric(list(pred), list(ref))
    assert metric.aggregate().item() == pytest.approx((2 * 2 / 6 + 1.0) / 2)
    assert metric.per_class()["liver"] == 1.0
    for i in range(2):  # the same numbers as the array functions
        scores = lits.score_case(pred[i, 0].numpy(), ref[i, 0].numpy(), (1, 1, 1)).dice
        assert metric.get_buffer()[i].tolist() == pytest.approx([scores["lesion"], scores["liver"]])


def _write_las(path, data_ras):
    affine = np.diag([*SPACING, 1.0])
    data, aff = reorient(data_ras, affine, "LAS")
    nifti(data, aff).to_filename(path)


@pytest.fixture()
def lits_dirs(tmp_path):
    """References segmentation-2.nii and segmentation-10.nii (LAS, uncompressed) and equal predictions."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    labels, _ = _lesion_volume()
    for n in (10, 2):
        _write_las(ref_dir / f"segmentation-{n}.nii", labels)
        _write_las(pred_dir / f"volume-{n}.nii.gz", labels)
    return pred_dir, ref_dir


def test_evaluate_dir_perfect_then_half_the_large_lesion_removed(lits_dirs):
    pred_dir, ref_dir = lits_dirs
    table = lits.evaluate_dir(pred_dir, ref_dir)
    assert [r["case"] for r in table.rows] == ["volume-2", "volume-10"]
    assert table.rows[0] == {
        "case": "volume-2",
        "lesion_dice": 1.0,
        "liver_dice": 1.0,
        "lesions_small": 1,
        "lesions_medium": 1,
        "lesions_large": 1,
    }
    assert table.summary["lesion_dice_small"] == table.summary["lesion_dice_large"] == 1.0
    labels, boxes = _lesion_volume()
    labels[40:90, 40:90, 2:4] = 1  # half of the large lesion's 4 slices become liver
    (pred_dir / "volume-10.nii.gz").unlink()
    _write_las(pred_dir / "segmentation-10.nii", labels)
    table = lits.evaluate_dir(pred_dir, ref_dir)
    lesion_voxels = 10 * 10 * 2 + 20 * 25 * 4 + 50 * 50 * 4
    removed = 50 * 50 * 2
    case_dice = 2 * (lesion_voxels - removed) / (2 * lesion_voxels - removed)
    assert table.rows[1]["lesion_dice"] == pytest.approx(case_dice)
    assert table.rows[1]["liver_dice"] == 1.0
    assert table.summary["lesion_dice_per_case"] == pytest.approx((1 + case_dice) / 2)
    assert table.summary["lesion_dice_global"] == pytest.approx(
        2 * (2 * lesion_voxels - removed) / (4 * lesion_voxels - removed)
    )
    assert table.summary["lesion_dice_large"] == pytest.approx((1 + 2 * 5000 / 15000) / 2)
    assert table.summary["lesions_large"] == 2


def test_evaluate_dir_errors(lits_dirs):
    pred_dir, ref_dir = lits_dirs
    _write_las(pred_dir / "segmentation-2.nii", _lesion_volume()[0])
    with pytest.raises(ValueError, match="two files for volume-2: .*segmentation-2.nii and .*volume-2.nii.gz"):
        lits.evaluate_dir(pred_dir, ref_dir)
    (pred_dir / "segmentation-2.nii").unlink()
    (pred_dir / "volume-10.nii.gz").unlink()
    with pytest.raises(ValueError, match="no prediction for 1 of 2 reference cases \\(volume-10\\)"):
        lits.evaluate_dir(pred_dir, ref_dir)


def test_cli_prints_the_table(lits_dirs, repo_root):
    pred_dir, ref_dir = lits_dirs
    command = [sys.executable, "-m", "shared", "evaluate", "lits", str(pred_dir), str(ref_dir)]
    done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "volume-10" in done.stdout
    assert "lesion_dice_global   : 1.0000" in done.stdout
