"""VolumeCache: cached arrays equal the uncached preprocessing; keys follow files and parameters; bad input."""

import logging
import os

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)

from shared.transforms.volume_cache import LoadCachedVolumed, VolumeCache, oversampling_weights, to_slice_first

PARAMS = {"hu_window": [-200, 300], "slice_thickness": 1.5, "image_size": 12}


def _preprocessing(keys=("image", "label")):
    """LiTS preprocessing (VA sec. 3.2) at a tiny size: RAS, HU [-200, 300] -> [0, 1], 1.5 mm slices, 12 x 12."""
    modes = ("bilinear", "nearest")[: len(keys)]
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            ScaleIntensityRanged("image", -200, 300, 0.0, 1.0, clip=True),
            Spacingd(keys, pixdim=(-1, -1, 1.5), mode=modes),
            Resized(keys, spatial_size=(12, 12, -1), mode=("area", "nearest")[: len(keys)]),
        ]
    )


def _write_case(folder, name="volume-0", depth=6, thickness=3.0, label_max=2):
    """LAS volume (20, 16, depth) in HU with a liver block and a lesion on slices 2-3, slices `thickness` mm apart."""
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 50, (20, 16, depth)).astype(np.int16)
    label = np.zeros((20, 16, depth), dtype=np.uint8)
    label[4:16, 3:13, 1:5] = 1
    label[8:12, 6:9, 2:4] = label_max
    affine = np.diag([-0.8, 0.8, thickness, 1.0])
    image_path, label_path = folder / f"{name}.nii", folder / f"seg-{name}.nii"
    nib.Nifti1Image(hu, affine).to_filename(image_path)
    nib.Nifti1Image(label, affine).to_filename(label_path)
    return {"image": str(image_path), "label": str(label_path), "case": name}


def test_cached_arrays_equal_the_uncached_pipeline(tmp_path):
    entry = _write_case(tmp_path)
    cache = VolumeCache(tmp_path / "cache", _preprocessing(), PARAMS)
    cached = cache.prepare(entry)
    direct = _preprocessing()(dict(entry))
    image = np.load(cached["image"], mmap_mode="r")
    assert isinstance(image, np.memmap) and image.dtype == np.float32
    np.testing.assert_allclose(image, to_slice_first(direct["image"]), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.load(cached["label"]), to_slice_first(direct["label"]).round())
    # 6 slices of 3 mm resampled to 1.5 mm: about twice as many slices, 12 x 12 each, slice-first
    assert image.shape[1:] == (12, 12) and cached["depth"] == image.shape[0] >= 11
    lesion_slices = cached["label_slices"][2]
    assert lesion_slices == np.flatnonzero((np.load(cached["label"]) == 2).any(axis=(1, 2))).tolist()
    # back to channel-first for whole-volume validation
    volume = LoadCachedVolumed(["image", "label"])(cached)
    np.testing.assert_allclose(volume["image"].numpy(), np.asarray(direct["image"]), atol=1e-6)


def test_cache_is_reused_and_keyed_by_file_and_parameters(tmp_path):
    entry = _write_case(tmp_path)
    cache = VolumeCache(tmp_path / "cache", _preprocessing(), PARAMS)
    first = cache.prepare(entry)

    def fail(_):
        raise AssertionError("preprocessing ran again")

    assert VolumeCache(tmp_path / "cache", fail, PARAMS).prepare(entry) == first
    other_params = VolumeCache(tmp_path / "cache", _preprocessing(), {**PARAMS, "image_size": 16})
    assert other_params.entry_dir(entry) != cache.entry_dir(entry)
    stat = os.stat(entry["image"])
    os.utime(entry["image"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.entry_dir(entry) != os.path.dirname(first["image"])


def test_slices_and_lesion_oversampling(tmp_path):
    entries = [_write_case(tmp_path, "volume-0"), _write_case(tmp_path, "volume-1", depth=4, thickness=1.5)]
    cache = VolumeCache(tmp_path / "cache", _preprocessing(), PARAMS)
    items = cache.slices(entries)
    depths = [cache.prepare(e)["depth"] for e in entries]
    assert len(items) == sum(depths)
    assert [i["slice"] for i in items] == list(range(depths[0])) + list(range(depths[1]))
    weights = oversampling_weights(items, ratio=4.0)
    lesion = [i["slice"] in i["label_slices"][2] for i in items]
    assert weights.tolist() == [4.0 if x else 1.0 for x in lesion]
    assert 0 < sum(lesion) < len(items)


def test_bad_inputs_name_the_case_and_write_nothing(tmp_path, caplog):
    cache = VolumeCache(tmp_path / "cache", _preprocessing(), PARAMS)
    bad_labels = _write_case(tmp_path, "volume-7", label_max=5)
    with pytest.raises(ValueError, match=r"case volume-7: label file .*values \[5\] outside \[0, 1, 2\]"):
        cache.prepare(bad_labels)
    assert not cache.entry_dir(bad_labels).exists()

    corrupt = _write_case(tmp_path, "volume-8")
    with open(corrupt["image"], "r+b") as f:
        f.truncate(200)
    with pytest.raises(ValueError, match=r"case volume-8: cannot read or preprocess .*volume-8.nii"):
        cache.prepare(corrupt)
    assert not cache.entry_dir(corrupt).exists()

    no_liver = _write_case(tmp_path, "volume-9", label_max=0)
    nib.Nifti1Image(np.zeros((20, 16, 6), np.uint8), np.diag([-0.8, 0.8, 3.0, 1.0])).to_filename(no_liver["label"])
    with caplog.at_level(logging.WARNING):
        cache.prepare(no_liver)
    assert "case volume-9: no voxel of label 1" in caplog.text
