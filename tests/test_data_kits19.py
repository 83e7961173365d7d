"""KiTS19 layout: phantoms (IPL orientation, dtypes, HU), validate (every corruption named), CLI, MSAN datalist."""

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared.data import kits19
from shared.phantoms import kits19 as kits19_phantoms

SHAPE = (16, 40, 40)  # (slices, rows, cols)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return kits19_phantoms.make_phantoms(
        tmp_path_factory.mktemp("kits19") / "data", num_cases=3, shape=SHAPE, num_unlabeled=1
    )


@pytest.fixture
def root(phantom_root, tmp_path) -> Path:
    """A private copy to corrupt."""
    return Path(shutil.copytree(phantom_root, tmp_path / "data"))


def _case(root: Path, case_id: int) -> Path:
    return root / kits19.case_name(case_id)


def test_phantom_ids_populate_every_split():
    assert kits19_phantoms.phantom_case_ids(12) == [0, 1, 2, 3, 4, 5, 6, 7, 180, 181, 190, 191]
    assert kits19_phantoms.phantom_case_ids(3) == [0, 180, 190]
    ids = kits19_phantoms.phantom_case_ids(210)
    assert sorted(ids) == list(range(210))
    with pytest.raises(ValueError, match="num_cases"):
        kits19_phantoms.phantom_case_ids(2)


def test_phantom_layout_dtypes_and_orientation(phantom_root):
    names = sorted(p.name for p in phantom_root.iterdir())
    assert names == ["case_00000", "case_00180", "case_00190", "case_00210", "phantom_tumours.json"]
    assert not (_case(phantom_root, 210) / kits19.LABEL).exists()  # unlabeled like the real test cases
    image = nib.load(_case(phantom_root, 0) / kits19.IMAGE)
    label = nib.load(_case(phantom_root, 0) / kits19.LABEL)
    assert image.shape == label.shape == SHAPE
    assert nib.aff2axcodes(image.affine) == ("I", "P", "L")
    np.testing.assert_array_equal(image.affine, label.affine)
    assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(label.dataobj))) == {0, 1, 2}


def test_phantom_anatomy_after_reorientation_to_ras(phantom_root):
    """Read back in RAS: spine posterior to the body centre, one kidney each side of the spine, tumour HU."""
    image = nib.as_closest_canonical(nib.load(_case(phantom_root, 0) / kits19.IMAGE))
    label = nib.as_closest_canonical(nib.load(_case(phantom_root, 0) / kits19.LABEL))
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    hu, lab = np.asanyarray(image.dataobj), np.asanyarray(label.dataobj)
    body = np.argwhere(hu > -500).mean(0)
    bone = np.argwhere(hu > np.percentile(hu, 99.5)).mean(0)  # the brightest voxels: spine
    assert bone[1] < body[1] - 3  # spine posterior: y (A) index smaller
    kidney_x = np.argwhere(lab > 0)[:, 0]
    assert kidney_x.min() < bone[0] < kidney_x.max()  # kidneys left and right of the spine
    assert 100 < hu[lab == 1].mean() < 200  # contrast-enhanced kidney
    assert 40 < hu[lab == 2].mean() < 130  # tumour enhances less than the kidney
    corners = hu[[0, 0, -1, -1], [0, -1, 0, -1], :]
    assert np.all(np.abs(corners.mean(-1) + 1000) < 30)  # air


def test_phantoms_reproducible(tmp_path, phantom_root):
    again = kits19_phantoms.make_phantoms(tmp_path / "a", num_cases=3, shape=SHAPE, num_unlabeled=1)
    other = kits19_phantoms.make_phantoms(tmp_path / "b", num_cases=3, seed=1, shape=SHAPE)
    for case in ("case_00000", "case_00190"):
        for name in (kits19.IMAGE, kits19.LABEL):
            assert (again / case / name).read_bytes() == (phantom_root / case / name).read_bytes()
            assert (other / case / name).read_bytes() != (phantom_root / case / name).read_bytes()


def test_validate_clean_root(phantom_root):
    assert kits19.validate(phantom_root) == []


def test_validate_missing_or_empty_root(tmp_path):
    (problem,) = kits19.validate(tmp_path / "nope")
    assert str(tmp_path / "nope") in problem and "python -m shared phantoms kits19" in problem
    (problem,) = kits19.validate(tmp_path)
    assert problem.startswith(str(tmp_path)) and "python -m shared phantoms kits19" in problem
    (problem,) = kits19.validate(None)
    assert "--dataset_dir" in problem


def test_validate_truncated_image(root):
    path = _case(root, 0) / kits19.IMAGE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (problem,) = kits19.validate(root)
    assert problem.startswith(str(path)) and "unreadable" in problem


def test_validate_label_value_outside_classes(root):
    path = _case(root, 180) / kits19.LABEL
    label = nib.load(path)
    data = np.asanyarray(label.dataobj).copy()
    data[3, 4, 5] = 7
    nib.Nifti1Image(data, label.affine, label.header).to_filename(path)
    (problem,) = kits19.validate(root)
    assert problem.startswith(str(path)) and "1 voxels have label values 7" in problem


def test_validate_label_without_kidney(root):
    path = _case(root, 0) / kits19.LABEL
    label = nib.load(path)
    nib.Nifti1Image(np.zeros(label.shape, np.uint8), label.affine, label.header).to_filename(path)
    (problem,) = kits19.validate(root)
    assert problem.startswith(str(path)) and "no kidney voxels" in problem


def test_validate_shape_and_affine_mismatch_and_not_3d(root):
    label_path = _case(root, 0) / kits19.LABEL
    label = nib.load(label_path)
    nib.Nifti1Image(np.ones((16, 40, 39), np.uint8), label.affine).to_filename(label_path)
    label_path = _case(root, 180) / kits19.LABEL
    shifted = label.affine.copy()
    shifted[0, 3] += 5
    nib.Nifti1Image(np.ones(SHAPE, np.uint8), shifted).to_filename(_case(root, 180) / kits19.LABEL)
    image_path = _case(root, 210) / kits19.IMAGE
    nib.Nifti1Image(np.zeros((*SHAPE, 2), np.int16), label.affine).to_filename(image_path)
    problems = kits19.validate(root)
    assert len(problems) == 3
    assert problems[0].startswith(str(_case(root, 0) / kits19.LABEL)) and "shape (16, 40, 39)" in problems[0]
    assert problems[1].startswith(str(label_path)) and "affine differs" in problems[1]
    assert problems[2].startswith(str(image_path)) and "not 3D" in problems[2]


def test_validate_reports_all_problems_at_once(root):
    (_case(root, 0) / kits19.LABEL).unlink()
    (_case(root, 190) / kits19.IMAGE).unlink()
    problems = kits19.validate(root)
    assert len(problems) == 2
    assert problems[0].startswith(str(_case(root, 0) / kits19.LABEL)) and "missing label" in problems[0]
    assert problems[1].startswith(str(_case(root, 190) / kits19.IMAGE)) and "missing image" in problems[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "shared", *args], cwd=repo, capture_output=True, text=True)


def test_cli_phantoms_then_validate(tmp_path):
    out = tmp_path / "kits19"
    assert _cli("phantoms", "kits19", str(out), "--num_cases", "3").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_00000", "case_00180", "case_00190", "phantom_tumours.json"]
    result = _cli("validate", "kits19", str(out))
    assert result.returncode == 0, result.stderr
    bad = out / "case_00180" / kits19.IMAGE
    bad.write_bytes(bad.read_bytes()[:1000])
    result = _cli("validate", "kits19", str(out))
    assert result.returncode == 1 and str(bad) in result.stderr


def test_datalist_msan_split(tmp_path):
    """Empty files stand in for cases: the datalist reads names only."""
    for case_id in [*range(0, 182), *range(188, 192), 209, 210, 211]:
        folder = tmp_path / kits19.case_name(case_id)
        folder.mkdir()
        (folder / kits19.IMAGE).touch()
        if case_id < 210:
            (folder / kits19.LABEL).touch()
    (tmp_path / "case_00005" / kits19.IMAGE).unlink()  # without image: left out (validate reports it)
    data = kits19.make_datalist(tmp_path)

    def ids(key):
        return [int(e["case"][5:]) for e in data[key]]

    assert ids("training") == [i for i in range(180) if i != 5]
    assert ids("test") == [180, 181, 188, 189]
    assert ids("validation") == [190, 191, 209]
    assert ids("unlabeled") == [210, 211] and all("label" not in e for e in data["unlabeled"])
    entry = data["training"][0]
    assert entry == {
        "image": str(tmp_path.resolve() / "case_00000" / kits19.IMAGE),
        "label": str(tmp_path.resolve() / "case_00000" / kits19.LABEL),
        "case": "case_00000",
    }


def test_datalist_of_phantoms(phantom_root):
    data = kits19.make_datalist(phantom_root)
    assert [len(data[k]) for k in ("training", "test", "validation", "unlabeled")] == [1, 1, 1, 1]
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in data["training"])
