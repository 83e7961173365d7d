"""2.5D slice bags (VA paper sec. 2.1 and 3.2): N images of 3 adjacent axial slices, in z order, target in the middle.

A bag of N images covers 3N contiguous slices (Table 2f: "27 (3 x 9)"); image k is centred ``3 (k - N // 2)``
slices from the target. Slices outside the volume replicate the edge slice, so every slice of any volume (even one
shorter than a bag) gets a full bag; the detector then sees repeated context near the ends, as a volume that
continues unchanged.

Volumes here are preprocessed and stored slice-first, (D, H, W) (see :mod:`shared.transforms.volume_cache`), so that
reading a bag touches 3N contiguous slices.
"""

from collections.abc import Mapping

import numpy as np
import torch
from monai.transforms import MapTransform

SLICES_PER_IMAGE = 3


def image_slice_indices(centre: int, depth: int, slices_per_image: int = SLICES_PER_IMAGE) -> np.ndarray:
    """Slice indices of the 2.5D image centred at ``centre`` (may lie outside), clamped to ``[0, depth - 1]``."""
    half = slices_per_image // 2
    return np.clip(np.arange(centre - half, centre + half + 1), 0, depth - 1)


def bag_slice_indices(target: int, depth: int, bag_size: int, slices_per_image: int = SLICES_PER_IMAGE) -> np.ndarray:
    """The ``bag_size * slices_per_image`` slice indices of the bag of ``target``, in z order, edge-replicated."""
    half = (bag_size * slices_per_image) // 2
    return np.clip(np.arange(target - half, target + half + 1), 0, depth - 1)


class SliceBagd(MapTransform):
    """Cut the bag of slice ``data[slice_key]`` out of slice-first volumes.

    ``data[image_key]`` is a (D, H, W) array (a memory-mapped ``.npy`` path is opened read-only) and becomes the bag
    (3N, H, W) float32 tensor; ``data[label_key]`` (D, H, W), if given, becomes the target slice's labels (1, H, W).
    """

    def __init__(
        self, bag_size: int, image_key: str = "image", label_key: str | None = "label", slice_key: str = "slice"
    ) -> None:
        super().__init__([image_key] + ([label_key] if label_key else []))
        if bag_size < 1 or bag_size % 2 == 0:
            raise ValueError(f"bag_size must be odd (target in the middle), got {bag_size}")
        self.bag_size = bag_size
        self.image_key, self.label_key, self.slice_key = image_key, label_key, slice_key

    @staticmethod
    def _array(value) -> np.ndarray:
        return np.load(value, mmap_mode="r") if isinstance(value, str) else np.asarray(value)

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        volume = self._array(out[self.image_key])
        target = int(out[self.slice_key])
        depth = volume.shape[0]
        if not 0 <= target < depth:
            raise IndexError(f"slice {target} outside a volume of {depth} slices ({out.get('case', 'unknown case')})")
        out[self.image_key] = torch.from_numpy(
            np.ascontiguousarray(volume[bag_slice_indices(target, depth, self.bag_size)], dtype=np.float32)
        )
        if self.label_key:
            label = self._array(out[self.label_key])
            out[self.label_key] = torch.from_numpy(np.array(label[target : target + 1]))
        return out
