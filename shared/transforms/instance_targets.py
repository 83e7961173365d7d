"""Instance targets (boxes, labels, masks) of one label slice, for torchvision's Mask R-CNN (VA paper sec. 3.2).

The VA Mask R-CNN "is trained to detect both liver and lesions" on each 2.5D image; an instance is a 2D connected
component (8-connectivity: diagonal pixels touch, as in a lesion outline) of a class region. Regions may nest: for
LiTS the liver instance covers its lesions (region liver = labels {1, 2}), so that the logical AND of predicted
liver and lesion masks at inference keeps the lesions inside the liver, and the liver matches the LiTS liver
(label >= 1).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from shared.data.lits import LESION, LIVER, REGIONS

LITS_REGIONS = {LIVER: REGIONS["liver"], LESION: REGIONS["lesion"]}
"""Detector class -> the label values of its region: the liver (with its lesions), the lesion."""
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def instance_targets(
    label: np.ndarray | torch.Tensor, regions: Mapping[int, Sequence[int]] = LITS_REGIONS, min_area: int = 1
) -> dict[str, torch.Tensor]:
    """Instances of a label slice (H, W) (or (1, H, W)).

    Returns ``boxes`` (K, 4) float32 ``[x1, y1, x2, y2]`` in pixels with x the column (W axis), y the row (H axis)
    and exclusive ends (a single pixel at row r, column c has the box ``[c, r, c + 1, r + 1]``, never degenerate),
    ``labels`` (K,) int64 (the detector classes, keys of ``regions``), ``masks`` (K, H, W) uint8. Components with
    fewer than ``min_area`` pixels are skipped; a slice without instances gives K = 0, which torchvision accepts.
    """
    label = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label)
    if label.ndim == 3 and label.shape[0] == 1:
        label = label[0]
    if label.ndim != 2:
        raise ValueError(f"expected a label slice (H, W) or (1, H, W), got shape {label.shape}")
    boxes, classes, masks = [], [], []
    for cls, values in regions.items():
        components, _ = ndimage.label(np.isin(label, values), structure=_EIGHT_CONNECTED)
        for index, extent in enumerate(ndimage.find_objects(components), start=1):
            mask = components == index
            if extent is None or mask.sum() < min_area:
                continue
            rows, cols = extent
            boxes.append([cols.start, rows.start, cols.stop, rows.stop])
            classes.append(cls)
            masks.append(mask)
    h, w = label.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))
        if masks
        else torch.zeros(0, h, w, dtype=torch.uint8),
    }


class InstanceTargetsd(MapTransform):
    """Dictionary version of :func:`instance_targets`: adds ``boxes``, ``labels``, ``masks`` from ``label_key``."""

    def __init__(
        self, label_key: str = "label", regions: Mapping[int, Sequence[int]] = LITS_REGIONS, min_area: int = 1
    ) -> None:
        super().__init__([label_key])
        self.label_key = label_key
        self.regions = {int(k): tuple(v) for k, v in regions.items()}
        self.min_area = min_area

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        out.update(instance_targets(out[self.label_key], self.regions, self.min_area))
        return out
