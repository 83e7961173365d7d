"""LiTS phantoms with ``fov liver``: slices that span the liver's box, so its lesions are more pixels across."""

import numpy as np
import pytest

from shared.phantoms import ct
from shared.phantoms import lits as phantoms

SHAPE = (48, 48, 16)  # (rows, cols, slices at 1.5 mm)
OPTIONS = {"context_bag": 9, "max_lookalikes": 1}


@pytest.mark.parametrize("key", [0, 3, 5])
def test_liver_field_of_view_is_finer_and_holds_the_whole_liver_and_its_objects(key):
    body, _ = phantoms.draw_volume(key, 0, SHAPE, True, "body", **OPTIONS)
    liver, lookalikes = phantoms.draw_volume(key, 0, SHAPE, True, "liver", **OPTIONS)
    body_pixel, liver_pixel = body.affine[0, 0], liver.affine[0, 0]
    assert body_pixel / liver_pixel > 1.3  # the liver's box is narrower than the body
    assert liver.affine[2, 2] == body.affine[2, 2]  # same slices
    is_liver = liver.organs == ct.ORGAN["liver"]
    assert is_liver.any()
    assert not (is_liver[[0, -1]].any() or is_liver[:, [0, -1]].any())  # the margin: no liver on the border
    # the same objects at the same places (the same draws), each with voxels in the finer grid
    assert [o.shape.center for o in liver.lesion_list] == [o.shape.center for o in body.lesion_list]
    for i in range(len(liver.lesion_list)):
        assert (liver.lesions == i + 1).sum() > (body.lesions == i + 1).sum() > 0
    assert lookalikes  # context phantoms keep their look-alike


def test_liver_box_is_within_the_muscle_wall_and_around_the_liver():
    anatomy = ct.sample_anatomy(np.random.default_rng(4))
    x0, x1, y0, y1 = phantoms.liver_box_mm(anatomy)
    a, b, _ = anatomy.body.radii
    assert x1 - x0 < 2 * a * anatomy.cavity_scale + 1 and y1 - y0 < 2 * b * anatomy.cavity_scale + 1
    for lobe in anatomy.liver:  # each lobe's centre lies in the box
        assert x0 < lobe.center[0] < x1 and y0 < lobe.center[1] < y1


def test_unknown_field_of_view_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--fov chest: give one of body, liver"):
        phantoms.make_phantoms(tmp_path / "p", num_cases=1, fov="chest")
    assert not (tmp_path / "p").exists()
