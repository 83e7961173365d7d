"""Slice-wise volume inference of a 2.5D VA Mask R-CNN as a MONAI ``Inferer`` (VA paper sec. 3.2).

"3D segmentation results are then obtained by stacking the masks generated for all slices", and lesions are kept
only inside the predicted liver ("the logical AND of the predicted liver and lesion masks"). Because this is an
``Inferer`` taking a whole preprocessed volume and returning a label volume on the same grid, a bundle's
``SupervisedEvaluator``, ``Invertd`` and ``SaveImaged`` work unchanged.

Feature cache (:class:`~shared.engines.inferers.feature_cache.ImageFeatureCache`): a 2.5D image (3 adjacent slices)
belongs to the bags of N target slices (those 0, 3, 6, ... slices away), so its FPN features (before VA) are computed
once and reused. Targets are visited in three interleaved passes (slices 0, 3, 6, ..., then 1, 4, 7, ..., then 2, 5,
8, ...): consecutive targets of a pass share N - 1 images, so the cache only ever holds the N images of one bag,
sliding along z. Without the cache every bag runs the backbone on its N images, N times the backbone work.

The RoI heads, not the backbone, dominate a cached volume (the mask head on up to 100 detections per slice, the box
head on every proposal): during a call the heads' box score threshold is raised to the inferer's
(:func:`heads_score_threshold`), so the mask head runs only on the detections that are pasted. Each slice's
detections are pasted into the label volume as soon as they are found, so memory does not grow with depth.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from monai.inferers import Inferer
from torch import nn

from shared.data.lits import LESION, LIVER
from shared.engines.inferers.feature_cache import ImageFeatureCache
from shared.networks.va_rcnn import paste_labels
from shared.transforms.slice_bags import bag_slice_indices, image_slice_indices


@contextmanager
def heads_score_threshold(roi_heads: nn.Module, score_threshold: float) -> Iterator[None]:
    """Within the block, torchvision's ``roi_heads`` drop the detections scoring below ``score_threshold`` (if their
    own threshold is lower) before the mask head; restored on exit.

    torchvision keeps scores strictly above ``roi_heads.score_thresh`` and :func:`paste_labels` those at least
    ``score_threshold``, so the float32 just below it is set. The detections kept are those :func:`paste_labels`
    pastes: a box is suppressed by NMS only by a higher-scoring one and the top ``detections_per_img`` above the
    threshold stay the top ones (up to float rounding in torchvision's batched NMS and in the mask head's kernels,
    which may differ with the number of RoIs).
    """
    previous = roi_heads.score_thresh
    below = torch.nextafter(torch.tensor(score_threshold, dtype=torch.float32), torch.tensor(-math.inf)).item()
    roi_heads.score_thresh = max(previous, below)
    try:
        yield
    finally:
        roi_heads.score_thresh = previous


class VolumeMaskInferer(Inferer):
    """Run a 2.5D detector with masks (``shared.networks.va_rcnn.VAMaskRCNN``) on every axial slice of volumes.

    Args:
        score_threshold: detections scoring below are ignored.
        mask_threshold: a pixel belongs to a detection where its mask probability is at least this.
        liver_label, lesion_label: detector classes (and output labels) of the liver and of the lesions; lesion
            pixels outside the predicted liver are dropped. ``lesion_label=None`` keeps every class as is.
        cache_features: reuse each 2.5D image's backbone features across the bags that contain it.

    ``__call__(inputs, network)``: ``inputs`` (B, 1, H, W, D) preprocessed volumes in [0, 1], axial slices along the
    last axis; returns (B, 1, H, W, D) float label maps (0 background, 1 liver, 2 lesion), with the inputs' metadata.
    """

    def __init__(
        self,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        liver_label: int = LIVER,
        lesion_label: int | None = LESION,
        cache_features: bool = True,
    ) -> None:
        super().__init__()
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.liver_label = liver_label
        self.lesion_label = lesion_label
        self.cache_features = cache_features
        self.images_computed = 0  # backbone images run in the last call (for benchmarks)

    def slice_labels(self, detections: dict[str, torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        """Paste one slice's detections into a (H, W) label map; lesions only inside the predicted liver."""
        return paste_labels(
            detections, shape, self.score_threshold, self.mask_threshold, self.liver_label, self.lesion_label
        )

    def _volume_uncached(self, volume: torch.Tensor, network, store: Callable[[int, dict], None]) -> None:
        depth = volume.shape[0]
        bag_size = network.backbone.bag_size
        for target in range(depth):
            bag = volume[torch.as_tensor(bag_slice_indices(target, depth, bag_size), device=volume.device)]
            store(target, network([bag])[0])
        self.images_computed += depth * len(network.backbone.image_offsets)

    def _volume_cached(self, volume: torch.Tensor, network, store: Callable[[int, dict], None]) -> None:
        depth = volume.shape[0]
        offsets = network.backbone.image_offsets
        stride = min((b - a for a, b in zip(offsets, offsets[1:])), default=1)

        def image_keys(target: int) -> list[tuple[int, ...]]:
            return [tuple(image_slice_indices(target + o, depth).tolist()) for o in offsets]

        def load(keys: list[tuple[int, ...]]) -> list[torch.Tensor]:
            return [volume[list(key)] for key in keys]

        for start in range(stride):
            # one image at a time: a pass's first bag needs N images, batching them would raise the peak memory
            cache = ImageFeatureCache(network, load, chunk_size=1)
            for target in range(start, depth, stride):
                bags = cache.bags([image_keys(target)])
                features = network.backbone.attend(bags.features)
                _, found = network.detect(bags.images, features, bags.original_image_sizes)
                store(target, found[0])
                cache.retain(set(image_keys(target + stride)).__contains__)
            self.images_computed += cache.images_computed

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"expected preprocessed volumes (B, 1, H, W, D), got shape {tuple(inputs.shape)}")
        if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            network = network.module  # the evaluator of a DDP training passes the wrapper
        network.eval()
        self.images_computed = 0
        out = torch.zeros_like(inputs)
        run = self._volume_cached if self.cache_features else self._volume_uncached
        with heads_score_threshold(network.roi_heads, self.score_threshold):
            for b in range(inputs.shape[0]):
                volume = inputs[b, 0].permute(2, 0, 1).contiguous().as_subclass(torch.Tensor)  # (D, H, W)
                labels = out[b, 0]

                def store(target: int, detections: dict, labels=labels, shape=tuple(volume.shape[1:])) -> None:
                    labels[..., target] = self.slice_labels(detections, shape)  # masks freed slice by slice

                run(volume, network, store)
        return out
