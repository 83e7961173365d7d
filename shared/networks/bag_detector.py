"""The contract shared by the 2.5D detectors (3DCE/CS-Att, VA Mask/Faster R-CNN) and their detection flow.

A 2.5D detector finds objects on a *target* slice from a *bag* of 3-slice images around it. Its backbone is split in
three steps so that a whole-volume inferer computes each image's features once and reuses them for every target
whose bag holds that image (``shared.engines.inferers.feature_cache``):

1. :attr:`BagBackbone.image_offsets`: which images a target needs (centres in slices from the target);
2. :meth:`BagBackbone.image_features`: features of single images;
3. :meth:`BagBackbone.attend`: a bag of image features -> the target's features for the RPN and RoI heads.

:class:`BagDetector` runs the rest (RPN, RoI heads, post-processing) from the target's features in one method,
:meth:`BagDetector.detect`; its ``forward`` is torchvision's ``GeneralizedRCNN`` flow: transform -> backbone ->
:meth:`~BagDetector.detect`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import torch
from torchvision.models.detection.image_list import ImageList

Features = dict[str, Any]
"""Named feature maps: ``name -> (B, C, h, w)`` tensors (a bag adds an axis: ``(B, N, C, h, w)``).

A target's features may also carry entries for the RoI heads only (VA's ``"bag"``: level -> ``(B, N, C, h, w)``)."""


@runtime_checkable
class BagBackbone(Protocol):
    """Backbone of a 2.5D detector: ``forward(x)`` on bags ``(B, 3N, H, W)`` = ``attend`` of ``image_features``.

    Attributes:
        out_channels: channels of the feature maps the RPN reads.
        rpn_feature_names: the entries of :meth:`attend`'s output the RPN reads; the others serve the RoI pools.
    """

    out_channels: int
    rpn_feature_names: tuple[str, ...]

    @property
    def image_offsets(self) -> list[int]:
        """Centres (in slices from the target slice) of the 3-slice images a target's bag holds, in z order."""
        ...

    def image_features(self, images: torch.Tensor) -> Features:
        """Features of 3-slice images ``(M, 3, H, W)`` (as the detector's transform outputs them): name -> (M, ...)."""
        ...

    def attend(self, bag: Features) -> Features:
        """Bags of image features (name -> ``(B, N, ...)``, N = ``len(image_offsets)``) -> the targets' features."""
        ...


class BagDetector:
    """Mixin for torchvision ``GeneralizedRCNN`` subclasses with a :class:`BagBackbone`: the detection flow in one
    place, :meth:`detect` reusable from precomputed features. Put it first in the bases (its ``forward`` wins)."""

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        """``GeneralizedRCNN.forward``: the loss dict in train mode, per image ``{"boxes", "scores", "labels"(,
        "masks")}`` in eval mode (boxes in the pixels of ``images``). A batched tensor ``(B, 3N, H, W)`` in eval mode
        gives :meth:`batch_outputs` instead. Scripted (``torch.jit.script``) it returns torchvision's
        ``(losses, detections)`` tuple in both modes."""
        if not torch.jit.is_scripting():
            if isinstance(images, torch.Tensor) and not self.training:
                return self.batch_outputs(images)
        original_image_sizes: list[tuple[int, int]] = [(img.shape[-2], img.shape[-1]) for img in images]
        image_list, targets = self.transform(images, targets)
        if targets is not None:
            for index, target in enumerate(targets):
                boxes = target["boxes"]
                if bool((boxes[:, 2:] <= boxes[:, :2]).any()):
                    raise ValueError(f"target {index}: every box needs a positive height and width, got {boxes}")
        features = self.backbone(image_list.tensors)
        losses, detections = self.detect(image_list, features, original_image_sizes, targets)
        if torch.jit.is_scripting():
            return losses, detections
        return self.eager_outputs(losses, detections)

    @torch.jit.unused
    def batch_outputs(self, images: torch.Tensor):
        """Eval-mode output for a batched tensor of bags: the detections of each, as for a list (torchvision's
        behaviour); a detector with a dense output (``VAMaskRCNN``: label maps) overrides it. Under
        ``torch.onnx.export`` (which needs tensors out) the :func:`padded_detections` of ``ThreeDCE``."""
        if torch.onnx.is_in_onnx_export():
            return padded_detections(self.forward(list(images)), self.roi_heads.detections_per_img, images)
        return self.forward(list(images))

    def detect(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        original_image_sizes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
        """RPN + RoI heads + post-processing from the targets' features (:meth:`BagBackbone.attend`'s output).

        ``images``: the transformed batch (sizes for anchors and box clipping); ``original_image_sizes``: the sizes
        boxes and masks are mapped back to. Returns ``(losses, detections)``; losses are empty in eval mode.
        ``features`` are :data:`Features`; the annotation is TorchScript's, which holds tensors only (an entry for
        the RoI heads that is not a tensor, VA's ``"bag"``, works in eager mode only).
        """
        rpn_features: dict[str, torch.Tensor] = OrderedDict()
        for name in self.backbone.rpn_feature_names:
            rpn_features[name] = features[name]
        proposals, proposal_losses = self.rpn(images, rpn_features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        detections = self.transform.postprocess(detections, images.image_sizes, original_image_sizes)
        losses: dict[str, torch.Tensor] = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses, detections


def padded_detections(detections: list[dict[str, torch.Tensor]], rows: int, images: torch.Tensor) -> torch.Tensor:
    """Per image ``{"boxes", "scores", "labels"}`` -> one float tensor ``(B, 1, rows, 6)``: each image's detections
    (by decreasing score, as torchvision sorts them) as rows ``(x1, y1, x2, y2, score, label)``, the rest zero
    (label 0, background). Padded with ``pad`` rather than a sliced assignment, so that an ONNX trace keeps the
    number of detections dynamic. ``images``: the batch they came from (device; the empty batch)."""
    padded = []
    for det in detections:
        found = torch.cat([det["boxes"], det["scores"][:, None], det["labels"][:, None].to(det["boxes"])], dim=1)
        padded.append(torch.nn.functional.pad(found.float(), [0, 0, 0, rows - found.shape[0]]))
    if not padded:
        return images.new_zeros((0, 1, rows, 6), dtype=torch.float32)
    return torch.stack(padded)[:, None]
