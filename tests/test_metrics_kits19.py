"""KiTS19 scoring: Dice edge cases, nested regions, the MONAI/ignite wrapper, evaluate_dir on NIfTI and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler

from shared.metrics import kits19
from shared.metrics.dice import dice
from shared.metrics.dice_metric import KiTS19DiceMetric
from shared.phantoms import kits19 as kits19_phantoms
from shared.phantoms.ct import nifti, reorient

SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag([*SPACING, 1.0])
AFFINE[:3, 3] = (-20.0, -30.0, 100.0)


def test_dice_edge_cases_and_a_hand_computed_value():
    empty, some = np.zeros(8, bool), np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    assert dice(empty, empty) == 1.0  # both empty: our documented choice
    assert dice(some, empty) == 0.0  # reference empty, prediction not
    assert dice(empty, some) == 0.0  # prediction empty
    ref = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    pred = np.array([0, 0, 1, 1, 1, 0, 0, 0], bool)
    assert dice(pred, ref) == pytest.approx(2 * 2 / (3 + 4))


def test_kidney_region_includes_tumour():
    ref = np.array([0, 1, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 1, 1])  # the tumour called kidney
    scores = kits19.case_dice(pred, ref)
    assert scores == {"kidney_dice": 1.0, "tumour_dice": 0.0, "mean_dice": 0.5}
    assert kits19.case_dice(np.zeros(6), np.zeros(6))["mean_dice"] == 1.0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two cases (B, 1, 4, 4, 2): case 0 kidney 16 voxels / tumour 8, the prediction calls 2 tumour voxels kidney;
    case 1 empty reference, prediction with one tumour voxel."""
    ref = torch.zeros(2, 1, 4, 4, 2)
    ref[0, 0, :2] = 1
    ref[0, 0, 2] = 2
    pred = ref.clone()
    pred[0, 0, 2, :2, 0] = 1
    pred[1, 0, 3, 3, 1] = 2
    return pred, ref


def test_wrapper_accepts_label_indices_and_one_hot():
    pred, ref = _batch()
    # case 0: kidney region identical (1.0); tumour 6 of 8 voxels found: 2*6/(6+8); case 1: both regions 0
    expected_tumour = (2 * 6 / 14 + 0.0) / 2
    expected_kidney = (1.0 + 0.0) / 2
    for to_input in (lambda x: x, lambda x: torch.nn.functional.one_hot(x[:, 0].long(), 3).movedim(-1, 1).float()):
        metric = KiTS19DiceMetric()
        metric(to_input(pred), to_input(ref))
        assert metric.per_class() == pytest.approx({"kidney": expected_kidney, "tumour": expected_tumour})
        assert metric.aggregate().item() == pytest.approx((expected_kidney + expected_tumour) / 2)


def test_wrapper_in_an_ignite_evaluator():
    pred, ref = _batch()
    engine = Engine(lambda engine, batch: batch)
    handler = IgniteMetricHandler(metric_fn=KiTS19DiceMetric(), output_transform=lambda out: out)
    handler.attach(engine, "kits19_dice")
    engine.run([(list(pred), list(ref))], max_epochs=1)  # decollated lists, as MONAI post transforms give
    assert engine.state.metrics["kits19_dice"] == pytest.approx(((1.0 + 0.0) / 2 + (2 * 6 / 14) / 2) / 2)
    assert engine.state.metric_details["kits19_dice"].shape == (2, 2)  # per case, per region


def _label_volume() -> np.ndarray:
    """RAS label map: a 6x5x4 kidney block holding a 2x2x4 tumour (16 voxels)."""
    label = np.zeros((12, 10, 6), np.uint8)
    label[2:8, 2:7, 1:5] = 1
    label[3:5, 3:5, 1:5] = 2
    return label


def _write(path, data_ras, axcodes="IPL", affine=AFFINE):
    data, aff = reorient(data_ras, affine, axcodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    nifti(data, aff).to_filename(path)


@pytest.fixture()
def kits_dirs(tmp_path):
    """References (IPL on disk, as KiTS19) for two cases, predictions equal to them stored in RAS order."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    label = _label_volume()
    for case in ("case_00000", "case_00003"):
        _write(ref_dir / case / "segmentation.nii.gz", label, "IPL")
        _write(pred_dir / f"{case}.nii.gz", label, "RAS")
    return pred_dir, ref_dir


def test_evaluate_dir_perfect_then_half_tumour_removed(kits_dirs):
    pred_dir, ref_dir = kits_dirs
    table = kits19.evaluate_dir(pred_dir, ref_dir)
    assert [r["case"] for r in table.rows] == ["case_00000", "case_00003"]
    assert all(r["mean_dice"] == 1.0 for r in table.rows)
    # remove half of case_00003's tumour (8 of 16 voxels) from its prediction
    label = _label_volume()
    label[3:5, 3:5, 1:3] = 0
    _write(pred_dir / "case_00003.nii.gz", label, "LAS")
    table = kits19.evaluate_dir(pred_dir, ref_dir)
    kidney_voxels = 6 * 5 * 4  # kidney region = label > 0, tumour included
    kidney = 2 * (kidney_voxels - 8) / (2 * kidney_voxels - 8)
    tumour = 2 * 8 / (8 + 16)
    assert table.rows[1]["kidney_dice"] == pytest.approx(kidney)
    assert table.rows[1]["tumour_dice"] == pytest.approx(tumour)
    assert table.summary["tumour_dice"] == pytest.approx((1 + tumour) / 2)
    assert table.summary["mean_dice"] == pytest.approx(((1 + kidney) / 2 + (1 + tumour) / 2) / 2)


def test_predictions_in_case_folders_are_found(kits_dirs, tmp_path):
    _, ref_dir = kits_dirs
    folders = tmp_path / "folders"
    for case in ("case_00000", "case_00003"):
        _write(folders / case / "prediction_seg.nii.gz", _label_volume())
    assert kits19.evaluate_dir(folders, ref_dir).summary["mean_dice"] == 1.0


def test_errors_name_the_files(kits_dirs):
    pred_dir, ref_dir = kits_dirs
    (pred_dir / "case_00003.nii.gz").unlink()
    with pytest.raises(ValueError, match="no prediction for 1 of 2 reference cases \\(case_00003\\)"):
        kits19.evaluate_dir(pred_dir, ref_dir)
    _write(pred_dir / "case_00003.nii.gz", _label_volume()[:, :, :5])
    with pytest.raises(ValueError, match="case_00003.nii.gz: shape \\(12, 10, 5\\)"):
        kits19.evaluate_dir(pred_dir, ref_dir)
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.8  # one voxel off
    _write(pred_dir / "case_00003.nii.gz", _label_volume(), affine=shifted)
    with pytest.raises(ValueError, match="case_00003.nii.gz: affine differs from the reference .*segmentation"):
        kits19.evaluate_dir(pred_dir, ref_dir)
    _write(pred_dir / "case_00003.nii.gz", _label_volume().astype(np.float32) * 0.5)
    with pytest.raises(ValueError, match="case_00003.nii.gz: holds non-integer values"):
        kits19.evaluate_dir(pred_dir, ref_dir)
    _write(pred_dir / "case_00003.nii.gz", _label_volume() * 2)
    with pytest.raises(ValueError, match="case_00003.nii.gz: label values range 0..4, expected 0..2"):
        kits19.evaluate_dir(pred_dir, ref_dir)


def test_phantom_root_scores_one_against_itself(tmp_path):
    root = kits19_phantoms.make_phantoms(tmp_path / "kits", num_cases=3, shape=(8, 16, 16))
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for seg in root.glob("case_*/segmentation.nii.gz"):
        (pred_dir / f"{seg.parent.name}.nii.gz").write_bytes(seg.read_bytes())
    table = kits19.evaluate_dir(pred_dir, root)
    assert table.summary["cases"] == 3 and table.summary["mean_dice"] == 1.0


def test_cli_prints_the_table_and_writes_csv(kits_dirs, repo_root, tmp_path):
    pred_dir, ref_dir = kits_dirs
    out_csv = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "shared", "evaluate", "kits19", str(pred_dir), str(ref_dir)]
    done = subprocess.run([*command, "--out_csv", str(out_csv)], cwd=repo_root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "case_00003" in done.stdout and "mean_dice" in done.stdout
    assert out_csv.read_text().splitlines()[0] == "case,kidney_dice,tumour_dice,mean_dice"
    (pred_dir / "case_00000.nii.gz").unlink()
    done = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert done.returncode != 0 and "case_00000" in done.stderr
