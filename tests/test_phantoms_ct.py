"""The shared CT phantom generator: geometry, HU per structure, lesion placement, orientation helpers."""

import nibabel as nib
import numpy as np
import pytest

from shared.phantoms import ct as phantom_ct
from shared.phantoms.ct import ORGAN, Ellipsoid, LesionRequest

SHAPE, SPACING = (64, 64, 24), (5.0, 5.0, 8.0)


@pytest.fixture(scope="module")
def case() -> phantom_ct.Phantom:
    requests = [LesionRequest("liver", 30.0, z_mm=60.0), LesionRequest("kidney", 40.0), LesionRequest("bone", 20.0)]
    return phantom_ct.make_abdomen(np.random.default_rng(0), SHAPE, SPACING, 0.0, requests)


def test_ellipsoid_level_is_normalised_radius_in_its_rotated_frame():
    shape = Ellipsoid((10.0, 0.0, 0.0), (4.0, 2.0, 1.0), angle=np.pi / 2)  # long axis turned onto y
    assert shape.level(10.0, 0.0, 0.0) == 0
    assert shape.level(10.0, 4.0, 0.0) == pytest.approx(1.0)  # 4 mm along the long axis, now y
    assert shape.level(12.0, 0.0, 0.0) == pytest.approx(1.0)  # 2 mm along the short axis, now x
    assert shape.level(10.0, 0.0, 0.5) == pytest.approx(0.25)
    assert not shape.contains(14.0, 0.0, 0.0)


def test_grid_affine_centres_the_field_of_view():
    x, y, z, affine = phantom_ct.ras_grid((3, 4, 5), (1.0, 2.0, 3.0), center_mm=10.0)
    assert (x.ravel().tolist(), y.ravel().tolist()) == ([-1, 0, 1], [-3, -1, 1, 3])
    assert z.ravel().tolist() == [4, 7, 10, 13, 16]
    np.testing.assert_allclose(affine @ [2, 3, 4, 1], [1, 3, 16, 1])
    x, y, z, affine = phantom_ct.ras_grid((3, 4, 5), (1.0, 2.0, 3.0), center_mm=(5.0, -2.0, 10.0))
    assert (x.ravel().tolist(), y.ravel().tolist()) == ([4, 5, 6], [-5, -3, -1, 1])
    assert z.ravel().tolist() == [4, 7, 10, 13, 16]


def test_hu_of_each_structure(case):
    hu, organs = case.hu, case.organs
    assert hu.shape == organs.shape == case.lesions.shape == SHAPE
    assert abs(hu[organs == ORGAN["air"]].mean() + 1000) < 20
    assert -130 < hu[organs == ORGAN["fat"]].mean() < -50
    assert 30 < hu[organs == ORGAN["liver"]].mean() < 100
    assert 60 < hu[organs == ORGAN["spleen"]].mean() < 140
    assert 100 < hu[organs == ORGAN["kidney"]].mean() < 200
    assert hu[organs == ORGAN["bone"]].mean() > 200
    noise = hu[:4, :4].std()  # air corner: the added noise only
    assert 8 < noise < 22


def test_lesions_are_placed_in_their_organs(case):
    sites = [lesion.site for lesion in case.lesion_list]
    assert sites == ["liver", "kidney", "bone"]
    liver, kidney, bone = (case.lesion_mask(s) for s in sites)
    assert liver.any() and kidney.any() and bone.any()
    assert np.all(case.organs[liver] == ORGAN["liver"])  # liver lesions are clipped to the liver
    assert np.all(case.organs[bone] == ORGAN["bone"])
    assert case.lesion_list[0].shape.center[2] == 60.0  # the requested z
    assert 0 < case.hu[liver].mean() < 50  # hypodense against the ~60 HU liver
    assert case.hu[kidney].mean() < case.hu[(case.organs == ORGAN["kidney"]) & ~kidney].mean()


def test_unplaceable_request_is_dropped_and_unknown_site_rejected():
    rng = np.random.default_rng(1)
    case = phantom_ct.make_abdomen(rng, (16, 16, 4), (20.0, 20.0, 10.0), 0.0, [LesionRequest("liver", 10, -400)])
    assert case.lesion_list == [] and not case.lesions.any()
    with pytest.raises(ValueError, match="lung"):
        phantom_ct.make_abdomen(rng, (8, 8, 2), (40.0, 40.0, 10.0), 0.0, [LesionRequest("lung", 10)])


def test_seeds_reproduce_and_vary_the_anatomy(case):
    requests = [LesionRequest("liver", 30.0, z_mm=60.0), LesionRequest("kidney", 40.0), LesionRequest("bone", 20.0)]
    again = phantom_ct.make_abdomen(np.random.default_rng(0), SHAPE, SPACING, 0.0, requests)
    np.testing.assert_array_equal(again.hu, case.hu)
    other = phantom_ct.make_abdomen(np.random.default_rng(1), SHAPE, SPACING, 0.0, requests)
    liver_a = np.argwhere(case.organs == ORGAN["liver"]).mean(0)
    liver_b = np.argwhere(other.organs == ORGAN["liver"]).mean(0)
    assert np.abs(liver_a - liver_b).max() > 1  # the liver moved by more than a voxel


def test_anatomy_sides_in_ras(case):
    """RAS: +x is the patient's right (liver), -x the left (spleen); the spine is posterior (-y)."""
    x_of = {name: np.argwhere(case.organs == ORGAN[name]).mean(0) for name in ("liver", "spleen", "bone", "fat")}
    assert x_of["liver"][0] > SHAPE[0] / 2 > x_of["spleen"][0]
    assert x_of["bone"][1] < x_of["fat"][1]


@pytest.mark.parametrize("codes", ["IPL", "LAS", "RAS"])
def test_reorient_round_trip(codes):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    affine[:3, 3] = [1, 2, 3]
    out, out_affine = phantom_ct.reorient(data, affine, codes)
    assert nib.aff2axcodes(out_affine) == tuple(codes)
    back = nib.as_closest_canonical(nib.Nifti1Image(out, out_affine))
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine)
    # every voxel keeps its world position
    np.testing.assert_allclose(out_affine @ [0, 0, 0, 1], affine @ [*np.argwhere(data == out[0, 0, 0])[0], 1])
