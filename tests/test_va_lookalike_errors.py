"""benchmarks/va_lookalike_errors.py: the look-alike share and the lesion Dice once look-alike voxels are called
liver, by hand, and the look-alike voxels of a phantom are the ones its writer left out of the lesion label."""

import numpy as np

from benchmarks.va_lookalike_errors import context_errors, lookalike_mask
from shared.metrics.label_volumes import load_ras
from shared.phantoms import lits


def test_context_errors_by_hand():
    ref = np.ones((1, 1, 10), dtype=np.uint8)  # liver
    ref[0, 0, :4] = 2  # a lesion of 4 voxels
    pred = ref.copy()
    pred[0, 0, 6:8] = 2  # 2 voxels called lesion on a look-alike
    pred[0, 0, 9] = 2  # 1 voxel called lesion elsewhere
    lookalike = np.zeros_like(ref, dtype=bool)
    lookalike[0, 0, 5:8] = True
    errors = context_errors(pred, ref, (1.0, 1.0, 1.0), lookalike)
    assert errors["lesion_dice"] == 2 * 4 / (7 + 4)
    assert errors["lookalike_share"] == 2 / 7
    assert errors["lesion_dice_without_lookalikes"] == 2 * 4 / (5 + 4)


def test_lookalike_voxels_of_a_phantom_are_liver_in_its_reference(tmp_path):
    shape, options = [48, 48, 24], {"context_bag": 9, "max_lookalikes": 1}
    lits.make_phantoms(tmp_path, num_cases=1, num_test=0, seed=0, shape=shape, context=True, **options)
    reference = tmp_path / "segmentation-0.nii"
    mask = lookalike_mask("volume-0", shape, options, reference)
    labels = np.asarray(load_ras(reference).dataobj)
    assert mask.shape == labels.shape and mask.any()
    assert (labels[mask] == 1).all()  # inside the liver, never labelled lesion
    volume = np.asarray(load_ras(tmp_path / "volume-0.nii").dataobj)
    liver_hu = np.median(volume[(labels == 1) & ~mask])
    assert np.median(volume[mask]) < liver_hu - 15  # hypodense like a lesion: the mask lies on the look-alike
