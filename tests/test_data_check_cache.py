"""The validation cache: unchanged files that passed are not re-read; changed files and problems always are."""

import json

import nibabel as nib
import numpy as np
import pytest

from shared.data import kits19, nifti_checks
from shared.data.check_cache import CheckCache, default_path
from shared.phantoms import kits19 as kits19_phantoms


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return kits19_phantoms.make_phantoms(tmp_path / "kits19", num_cases=3, shape=(8, 24, 24))


def _no_reads(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(nifti_checks, "_read", fail)


def test_unchanged_files_are_not_read_again(root, tmp_path, monkeypatch):
    assert default_path() == tmp_path / "cache" / "ct-attention-bundles" / "valid_nifti.json"
    assert kits19.validate(root) == []
    assert len(json.loads(default_path().read_text())) == 3  # three clean image/label pairs
    _no_reads(monkeypatch)
    assert kits19.validate(root) == []


def test_changed_file_is_read_again(root):
    assert kits19.validate(root) == []
    path = root / "case_00180" / kits19.LABEL
    label = nib.load(path)
    data = np.asanyarray(label.dataobj).copy()
    data[0, 0, 0] = 7
    nib.Nifti1Image(data, label.affine, label.header).to_filename(path)
    (problem,) = kits19.validate(root)
    assert problem.startswith(str(path))
    (again,) = kits19.validate(root)  # problems are never remembered
    assert again == problem


def test_deleted_files_are_pruned_and_bad_cache_files_ignored(tmp_path):
    image = tmp_path / "a.nii"
    image.write_bytes(b"x")
    cache = CheckCache(tmp_path / "c.json")
    cache.add(cache.key(image, check="image"))
    cache.add(cache.key(tmp_path / "b.nii", check="image"))  # cannot stat: no key, nothing added
    cache.save()
    assert cache.key(image, check="image") in CheckCache(tmp_path / "c.json")
    image.unlink()
    other = tmp_path / "d.nii"
    other.write_bytes(b"y")
    cache.add(cache.key(other, check="image"))
    cache.save()
    assert list(json.loads((tmp_path / "c.json").read_text()).values()) == [[str(other.resolve())]]
    (tmp_path / "c.json").write_text("{not json")
    assert cache.key(other, check="image") not in CheckCache(tmp_path / "c.json")
    blocked = CheckCache(tmp_path / "c.json" / "inside-a-file.json")  # cannot be written: ignored
    blocked.add(blocked.key(other, check="image"))
    blocked.save()
