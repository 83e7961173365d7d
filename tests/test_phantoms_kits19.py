"""KiTS19 phantoms: tumour sizes within the promised range (in mm and in voxels), look-alike cysts, HU, mixed sizes."""

import json

import nibabel as nib
import numpy as np
import pytest

from shared.data.kits19 import IMAGE, KIDNEY, LABEL, TUMOUR
from shared.phantoms import ct
from shared.phantoms.kits19 import MIXED_SIZES_MM, TUMOUR_LIST, TUMOUR_SIZES_MM, make_phantoms


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("kits19"), num_cases=12, seed=0)


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    return make_phantoms(tmp_path_factory.mktemp("kits19_mixed"), num_cases=6, seed=0, mixed_sizes=True)


def _case(root, case):
    image, label = (nib.load(root / case / name) for name in (IMAGE, LABEL))
    return np.asanyarray(image.dataobj), np.asanyarray(label.dataobj), image.affine


def test_every_case_has_tumours_in_the_promised_size_range(demo_root):
    listed = json.loads((demo_root / TUMOUR_LIST).read_text())
    assert sorted(listed) == sorted(p.name for p in demo_root.glob("case_*"))
    low, high = TUMOUR_SIZES_MM["small"][0], TUMOUR_SIZES_MM["large"][1]
    long_axes = []
    for case, entry in listed.items():
        assert entry["tumours"], case
        for tumour in entry["tumours"]:
            long_axis = tumour["diameters_mm"][0]
            assert low <= long_axis <= high and long_axis == max(tumour["diameters_mm"][:2])
            # resolvable on the case's own grid: at least 4.8 voxels along the long axis, 3.5 across the slices
            assert tumour["long_axis_voxels"] >= 4.8 and tumour["z_voxels"] >= 3.5
            long_axes.append(long_axis)
        # the list tells the truth: its voxel counts are the tumour label of the written segmentation
        _, label, _ = _case(demo_root, case)
        assert np.count_nonzero(label == TUMOUR) == sum(t["labelled_voxels"] for t in entry["tumours"])
    assert min(long_axes) < 30 and max(long_axes) > 50  # several size classes


def test_mixed_sizes_put_small_tumours_beside_a_large_one(mixed_root):
    for case, entry in json.loads((mixed_root / TUMOUR_LIST).read_text()).items():
        long_axes = sorted(t["diameters_mm"][0] for t in entry["tumours"])
        assert len(long_axes) == 3, case
        assert long_axes[-1] >= MIXED_SIZES_MM["large"][0] and long_axes[0] <= MIXED_SIZES_MM["small"][1]
        assert long_axes[-1] / long_axes[0] >= 2


def test_mixed_sizes_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match="mixed_sizes must be True or False"):
        make_phantoms(tmp_path, num_cases=3, mixed_sizes="false")


def test_hu_of_kidney_tumour_and_air(demo_root):
    for case in ("case_00000", "case_00180"):
        image, label, _ = _case(demo_root, case)
        assert image.dtype == np.int16 and image.min() >= -1024
        kidney, tumour = image[label == KIDNEY].mean(), image[label == TUMOUR].mean()
        assert 100 < kidney < 200 and 40 < tumour < 120 and tumour < kidney - 30
        corner = image[:, :4, :4].astype(float)  # air outside the body: about -1000 HU with CT-like noise
        assert abs(corner.mean() + 1000) < 20 and 8 < corner.std() < 25


def test_renal_cysts_are_present_dark_and_labelled_kidney(demo_root):
    """Cysts (0-20 HU) inside kidneys are tumour look-alikes that KiTS19 labels kidney; the demo set holds some."""
    renal_cysts = 0
    for folder in sorted(demo_root.glob("case_*")):
        anatomy = ct.sample_anatomy(np.random.default_rng([0, int(folder.name[5:])]))  # as make_phantoms draws it
        image, label, affine = _case(demo_root, folder.name)
        for cyst in anatomy.cysts:
            if cyst.radii[0] < 7 or not any(k.contains(*cyst.center) for k in anatomy.kidneys):
                continue
            voxel = np.rint(np.linalg.inv(affine) @ [*cyst.center, 1.0])[:3].astype(int)
            if np.all((voxel >= 0) & (voxel < image.shape)):
                assert label[tuple(voxel)] == KIDNEY and image[tuple(voxel)] < 60
                renal_cysts += 1
    assert renal_cysts >= 2
