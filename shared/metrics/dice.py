"""Dice of binary masks and of label regions (a region = a set of label values, e.g. kidney = {1, 2}), on arrays.

Both challenges that score with Dice (KiTS19, LiTS) define their classes as nested regions of one label map, and
both give 1 when prediction and reference are empty and 0 when only one of them is (see ``dice``). The MONAI
metric computing the same is in ``shared.metrics.dice_metric``.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def dice_terms(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """``(2|P∩G|, |P|+|G|)`` of two binary masks: Dice's numerator and denominator, summable over cases."""
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    return 2 * int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))


def pooled_dice(terms: Iterable[tuple[int, int]]) -> float:
    """Dice of all voxels pooled ("global Dice"): sum of numerators over sum of denominators; 1.0 if all empty."""
    numerator = denominator = 0
    for n, d in terms:
        numerator, denominator = numerator + n, denominator + d
    return 1.0 if denominator == 0 else numerator / denominator


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice ``2|P∩G| / (|P|+|G|)`` of two binary masks; 1.0 when both are empty, so 0.0 when only one is."""
    return pooled_dice([dice_terms(pred, ref)])


def region_dice(
    pred_labels: np.ndarray, ref_labels: np.ndarray, regions: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """``{region: dice(pred in values, ref in values)}`` for label maps of the same shape."""
    return {name: dice(np.isin(pred_labels, values), np.isin(ref_labels, values)) for name, values in regions.items()}
