"""ensure_valid: the bundles' gate on a dataset root, with actionable DatasetError messages."""

import pytest

from shared.data import kits19
from shared.data.validation import DatasetError, ensure_valid
from shared.phantoms import kits19 as kits19_phantoms


@pytest.mark.parametrize("dataset", ["kits19", "lits", "deeplesion"])
def test_unset_root_says_how_to_point_at_data_or_make_phantoms(dataset):
    with pytest.raises(DatasetError) as info:
        ensure_valid(dataset, None)
    message = str(info.value)
    assert f"--dataset_dir /path/to/{dataset}" in message
    assert f"python -m shared phantoms {dataset} /tmp/{dataset}" in message


def test_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetError, match="not found") as info:
        ensure_valid("lits", tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)
    assert isinstance(info.value, ValueError)


def test_valid_root_passes_and_problems_are_listed_one_per_line(tmp_path):
    root = kits19_phantoms.make_phantoms(tmp_path / "kits19", num_cases=3, shape=(8, 24, 24))
    assert ensure_valid("kits19", root) is None
    (root / "case_00000" / kits19.LABEL).unlink()
    (root / "case_00180" / kits19.IMAGE).write_bytes(b"not a nifti")
    with pytest.raises(DatasetError) as info:
        ensure_valid("KiTS19", root)
    lines = str(info.value).splitlines()
    assert "2 problem(s)" in lines[0]
    assert lines[1].startswith(f"  - {root / 'case_00000' / kits19.LABEL}")
    assert lines[2].startswith(f"  - {root / 'case_00180' / kits19.IMAGE}")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="kits19, lits, deeplesion"):
        ensure_valid("brats", "/tmp")
