"""Per-image backbone features of one volume, computed once and reused by every target slice whose bag holds them.

A 2.5D detector (:class:`shared.networks.bag_detector.BagDetector`) reads a bag of N 3-slice images per target
slice, and neighbouring targets share most of them. :class:`ImageFeatureCache` computes an image's features
(``model.transform`` then ``model.backbone.image_features``) the first time a bag asks for it, returns the bags
stacked for ``model.backbone.attend``, and forgets the images no later target needs (:meth:`ImageFeatureCache.retain`).
Both volume inferers use it: ``volume_mask.VolumeMaskInferer`` (VA Mask R-CNN on LiTS) and
``volume_boxes.VolumeDetectionInferer`` (3DCE / VA Faster R-CNN on CT volumes).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torchvision.models.detection.image_list import ImageList

from shared.networks.bag_detector import Features


@dataclass
class TargetBags:
    """Inputs of ``model.detect`` for T targets: their bags' features and the images' geometry.

    ``images``: the transformed image size (T entries); ``original_image_sizes``: the loaded images' (H, W), where
    detections are mapped back to; ``features``: name -> (T, N, ...) for ``model.backbone.attend``.
    """

    images: ImageList
    original_image_sizes: list[tuple[int, int]]
    features: Features


class ImageFeatureCache:
    """Backbone features of a volume's 3-slice images, keyed by a name of each image (e.g. its slice positions).

    Args:
        model: a :class:`shared.networks.bag_detector.BagDetector` (its ``transform`` and ``backbone``).
        load: image keys -> the images, ``(3, H, W)`` tensors on the model's device; every image of a volume has the
            same size.
        chunk_size: images run through the backbone together (None: all the images a call is missing at once;
            1 keeps the peak memory to one image's activations).

    ``images_requested`` and ``images_computed`` count the bag members asked for and the images run.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        load: Callable[[Sequence[Hashable]], list[torch.Tensor]],
        chunk_size: int | None = None,
    ) -> None:
        self.model = model
        self.load = load
        self.chunk_size = chunk_size
        self.images_requested = 0
        self.images_computed = 0
        self._features: OrderedDict[Hashable, Features] = OrderedDict()
        self._geometry: tuple[ImageList, tuple[int, int]] | None = None  # one transformed image, its loaded size

    def _compute(self, keys: list[Hashable]) -> None:
        images = self.load(keys)
        image_list, _ = self.model.transform(images)
        features = self.model.backbone.image_features(image_list.tensors)
        for i, key in enumerate(keys):
            self._features[key] = OrderedDict((name, f[i]) for name, f in features.items())
        self._geometry = (
            ImageList(image_list.tensors[:1], image_list.image_sizes[:1]),
            (int(images[0].shape[-2]), int(images[0].shape[-1])),
        )
        self.images_computed += len(keys)

    def bags(self, bags: Sequence[Sequence[Hashable]]) -> TargetBags:
        """The features of ``bags`` (one list of image keys per target, in z order), computing the missing images."""
        missing = list(OrderedDict.fromkeys(k for bag in bags for k in bag if k not in self._features))
        step = self.chunk_size or max(len(missing), 1)
        for start in range(0, len(missing), step):
            self._compute(missing[start : start + step])
        self.images_requested += sum(len(bag) for bag in bags)
        names = next(iter(self._features.values())).keys()
        features = OrderedDict(
            (name, torch.stack([torch.stack([self._features[k][name] for k in bag]) for bag in bags])) for name in names
        )
        one_image, original_size = self._geometry
        n = len(bags)
        images = ImageList(one_image.tensors.expand(n, -1, -1, -1), one_image.image_sizes * n)
        return TargetBags(images, [original_size] * n, features)

    def retain(self, needed: Callable[[Hashable], bool]) -> None:
        """Forget the images whose key ``needed`` rejects (no later target reads them)."""
        for key in [k for k in self._features if not needed(k)]:
            del self._features[key]
