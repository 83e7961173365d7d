"""LiTS layout: phantoms (LAS, varied slice thickness, HU), validate (every corruption named), CLI, VA split."""

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared.data import lits
from shared.phantoms import lits as lits_phantoms

SHAPE = (40, 40, 24)  # (rows, cols, slices at 1.5 mm)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return lits_phantoms.make_phantoms(tmp_path_factory.mktemp("lits"), num_cases=3, shape=SHAPE, num_test=1)


@pytest.fixture
def root(phantom_root, tmp_path) -> Path:
    """A private copy to corrupt."""
    return Path(shutil.copytree(phantom_root, tmp_path / "lits"))


def test_phantom_layout_dtypes_orientation_and_thickness(phantom_root):
    names = sorted(p.name for p in phantom_root.iterdir())
    assert names == [*(f"segmentation-{n}.nii" for n in range(3)), "test-volume-0.nii"] + [
        f"volume-{n}.nii" for n in range(3)
    ]
    thicknesses = []
    for n in range(3):
        image, label = nib.load(phantom_root / f"volume-{n}.nii"), nib.load(phantom_root / f"segmentation-{n}.nii")
        assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
        np.testing.assert_array_equal(image.affine, label.affine)
        assert image.shape == label.shape and image.shape[:2] == SHAPE[:2]
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        thickness = float(image.header.get_zooms()[2])
        thicknesses.append(thickness)
        assert image.shape[2] == round(SHAPE[2] * 1.5 / thickness)  # same z extent, slice count follows thickness
        assert set(np.unique(np.asanyarray(label.dataobj))) <= {0, 1, 2}
    assert thicknesses == pytest.approx([0.7, 5.0, 1.0])  # THICKNESSES_MM from seed 0: thin and thick slices


def test_phantom_anatomy_after_reorientation_to_ras(phantom_root):
    """Read back in RAS: the liver lies on the patient's right (+x), liver and lesion HU as in portal venous CT."""
    hu, lab = [], []
    for n in range(3):
        image = nib.as_closest_canonical(nib.load(phantom_root / f"volume-{n}.nii"))
        label = nib.as_closest_canonical(nib.load(phantom_root / f"segmentation-{n}.nii"))
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        volume, labels = np.asanyarray(image.dataobj), np.asanyarray(label.dataobj)
        body_x = np.argwhere(volume > -500)[:, 0].mean()
        assert np.argwhere(labels == 1)[:, 0].mean() > body_x + 3
        hu.append(volume)
        lab.append(labels)
    hu = np.concatenate([v.ravel() for v in hu])
    lab = np.concatenate([v.ravel() for v in lab])
    assert 40 < hu[lab == 1].mean() < 90
    assert (lab == 2).any() and 0 < hu[lab == 2].mean() < 55  # hypodense lesions


def test_phantoms_reproducible(tmp_path, phantom_root):
    again = lits_phantoms.make_phantoms(tmp_path / "a", num_cases=2, shape=SHAPE, num_test=1)
    other = lits_phantoms.make_phantoms(tmp_path / "b", num_cases=2, seed=1, shape=SHAPE, num_test=0)
    for name in ("volume-1.nii", "segmentation-1.nii", "test-volume-0.nii"):
        assert (again / name).read_bytes() == (phantom_root / name).read_bytes()
    assert (other / "volume-1.nii").read_bytes() != (phantom_root / "volume-1.nii").read_bytes()


def test_validate_clean_root(phantom_root):
    assert lits.validate(phantom_root) == []


def test_validate_missing_or_empty_root(tmp_path):
    (problem,) = lits.validate(tmp_path / "nope")
    assert problem.startswith(str(tmp_path / "nope")) and "python -m shared phantoms lits" in problem
    (problem,) = lits.validate(tmp_path)
    assert problem.startswith(str(tmp_path)) and "volume-N.nii" in problem


def test_validate_truncated_uncompressed_volume(root):
    path = root / "volume-0.nii"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (problem,) = lits.validate(root)
    assert problem.startswith(str(path)) and "unreadable" in problem


def test_validate_label_without_liver(root):
    path = root / "segmentation-0.nii"
    label = nib.load(path)
    nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine, label.header).to_filename(path)
    (problem,) = lits.validate(root)
    assert problem.startswith(str(path)) and "no liver voxels" in problem


def test_validate_reports_all_problems_at_once(root):
    label_path = root / "segmentation-1.nii"
    label = nib.load(label_path)
    data = np.asanyarray(label.dataobj).copy()
    data[0, 0, 0] = 7
    nib.Nifti1Image(data, label.affine, label.header).to_filename(label_path)
    (root / "segmentation-2.nii").unlink()
    (root / "volume-0.nii").unlink()
    problems = lits.validate(root)
    assert len(problems) == 3
    assert problems[0].startswith(str(root / "segmentation-0.nii")) and "missing image" in problems[0]
    assert problems[1].startswith(str(label_path)) and "label values 7" in problems[1]
    assert problems[2].startswith(str(root / "volume-2.nii")) and "missing label" in problems[2]


def test_validate_shape_mismatch_and_duplicates(root):
    label = nib.load(root / "segmentation-0.nii")
    nib.Nifti1Image(np.ones((40, 40, 3), np.uint8), label.affine).to_filename(root / "segmentation-0.nii")
    (root / "Training Batch 2").mkdir()
    shutil.copy(root / "volume-1.nii", root / "Training Batch 2" / "volume-1.nii")
    problems = lits.validate(root)
    assert len(problems) == 2
    assert problems[0].startswith(str(root / "volume-1.nii")) and "duplicate" in problems[0]
    assert problems[1].startswith(str(root / "segmentation-0.nii")) and "label shape (40, 40, 3)" in problems[1]


def test_cli_validate(root):
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "shared", "validate", "lits", str(root)]
    assert subprocess.run(command, cwd=repo, capture_output=True).returncode == 0
    (root / "segmentation-1.nii").unlink()
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1 and str(root / "volume-1.nii") in result.stderr


@pytest.fixture
def names_root(tmp_path) -> Path:
    """20 labelled volumes (empty files: the datalist reads names only), in two batch folders, and 2 test volumes."""
    for n in range(20):
        folder = tmp_path / ("Training Batch 1" if n < 8 else "Training Batch 2")
        folder.mkdir(exist_ok=True)
        (folder / f"volume-{n}.nii").touch()
        (folder / f"segmentation-{n}.nii").touch()
    (tmp_path / "test-volume-0.nii").touch()
    (tmp_path / "test-volume-1.nii").touch()
    return tmp_path


def _ids(entries) -> list[int]:
    return [int(e["case"].rsplit("-", 1)[1]) for e in entries]


def test_datalist_75_25_seeded_and_disjoint(names_root):
    data = lits.make_datalist(names_root, seed=0, fold=0)
    train, val = _ids(data["training"]), _ids(data["validation"])
    assert (len(train), len(val)) == (15, 5)
    assert sorted(train + val) == list(range(20))
    assert _ids(data["test"]) == [0, 1] and all("label" not in e for e in data["test"])
    assert lits.make_datalist(names_root, seed=0, fold=0) == data
    assert _ids(lits.make_datalist(names_root, seed=1, fold=0)["validation"]) != val
    entry = data["training"][0]
    n = train[0]
    folder = names_root.resolve() / ("Training Batch 1" if n < 8 else "Training Batch 2")
    assert entry == {
        "image": str(folder / f"volume-{n}.nii"),
        "label": str(folder / f"segmentation-{n}.nii"),
        "case": f"volume-{n}",
    }


def test_datalist_folds_rotate_the_validation_quarter(names_root):
    quarters = [set(_ids(lits.make_datalist(names_root, seed=5, fold=k)["validation"])) for k in range(4)]
    assert [len(q) for q in quarters] == [5, 5, 5, 5]
    assert set().union(*quarters) == set(range(20))  # each volume validates in exactly one fold
    with pytest.raises(ValueError, match="fold"):
        lits.make_datalist(names_root, fold=4)


def test_datalist_unlabelled_volume_goes_to_test(names_root):
    (names_root / "Training Batch 2" / "segmentation-19.nii").unlink()
    data = lits.make_datalist(names_root)
    assert len(data["training"]) + len(data["validation"]) == 19
    assert [e["case"] for e in data["test"]] == ["test-volume-0", "test-volume-1", "volume-19"]
