"""VA Mask R-CNN and VA Faster R-CNN (Wang et al., MICCAI 2019, Fig. 2, sec. 2 and 3.2-3.3) on torchvision.

The 2.5D input is a *bag*: one image of 3N channels holding N 2.5D images (3 adjacent slices each) in z order, the
target image in the middle. :class:`VABackbone` replaces torchvision's ``BackboneWithFPN``: it splits the bag into
N 3-channel images, runs the shared ResNet-FPN once on all of them (one batched call), and applies a
:class:`~shared.networks.blocks.volumetric_attention.VolumetricAttention` block at every FPN level, returning the
attended features of the target image; it follows the 2.5D backbone contract of
:class:`shared.networks.bag_detector.BagBackbone`. :class:`VAMaskRCNN` and :class:`VAFasterRCNN` are torchvision's
``MaskRCNN`` and ``FasterRCNN`` with the detection flow of :class:`~shared.networks.bag_detector.BagDetector`;
torchvision's ``GeneralizedRCNNTransform``, RPN, RoI heads and mask head are used unchanged. The wrapper keeps
torchvision's parameter names (``backbone.body.*``, ``backbone.fpn.*``), so COCO Mask R-CNN checkpoints load onto it
(:func:`shared.networks.pretrained.load_pretrained`).

Inputs are expected in [0, 1] (the paper's HU window [-200, 300] mapped to [0, 1], sec. 3.2). Each 3-channel image
is normalised inside the wrapper with the ImageNet mean/std that torchvision's pretrained ResNets expect; the
detector's own transform is set to the identity normalisation (mean 0, std 1) so it works for any 3N.
"""

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from shared.networks.bag_detector import BagDetector, Features
from shared.networks.blocks.volumetric_attention import VolumetricAttention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SLICES_PER_IMAGE = 3  # sec. 3.2: "we stack three adjacent axial slices into a 3-channel image"
LOCATIONS = ("rpn", "roi")


class VABackbone(nn.Module):
    """Shared 2D ResNet-FPN over a bag of N 2.5D images + volumetric attention (VA paper Fig. 2).

    Args:
        fpn_backbone: torchvision ``BackboneWithFPN`` (3-channel images); its ``body`` and ``fpn`` are reused.
        bag_size: N, number of 2.5D images in the bag (input channels = 3N).
        attention: False gives the baseline 2.5D detector: only the target image is used (same input format).
        channel, spatial: switches of the VA block (Table 2d).
        location: ``"rpn"`` (default, Fig. 2): VA on every FPN level, one block per level (levels differ in scale
            and statistics, so they do not share weights); ``"roi"`` (Table 2e "RCNN"): the RPN sees the target's
            own features and VA is applied to RoI-aligned bag features by :class:`BagRoIAlign` in the heads, which
            read them from the ``"bag"`` entry :meth:`attend` adds.

    ``forward(x)``: x (B, 3N, H, W) in [0, 1] -> OrderedDict level -> (B, C, h, w), like ``BackboneWithFPN``
    (plus ``"bag"`` in the ``"roi"`` location).
    """

    def __init__(
        self,
        fpn_backbone: BackboneWithFPN,
        bag_size: int,
        attention: bool = True,
        channel: bool = True,
        spatial: bool = True,
        location: str = "rpn",
    ) -> None:
        super().__init__()
        if bag_size < 1 or bag_size % 2 == 0:
            raise ValueError(f"bag_size must be odd (target in the middle), got {bag_size}")
        if location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")
        self.body = fpn_backbone.body
        self.fpn = fpn_backbone.fpn
        self.out_channels = fpn_backbone.out_channels
        self.bag_size = bag_size
        self.target_index = bag_size // 2
        self.use_attention = attention
        self.location = location
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        levels = list(self.body.return_layers.values())
        if isinstance(self.fpn.extra_blocks, LastLevelMaxPool):
            levels.append("pool")
        self.levels = levels
        self.rpn_feature_names = tuple(levels)
        if attention and location == "rpn":
            self.attention = nn.ModuleDict(
                {lvl: VolumetricAttention(2, self.out_channels, channel=channel, spatial=spatial) for lvl in levels}
            )

    @property
    def image_offsets(self) -> list[int]:
        """Offsets (in slices) of the centres of the 2.5D images this backbone reads, relative to the target slice.

        With attention the bag is N contiguous 3-slice images (27 slices for N=9, Table 2f), so image k is centred
        ``3 (k - N // 2)`` slices from the target; without attention only the target image (offset 0).
        """
        if not self.use_attention:
            return [0]
        return [SLICES_PER_IMAGE * (k - self.target_index) for k in range(self.bag_size)]

    def image_features(self, images: torch.Tensor) -> Features:
        """FPN features of 3-channel images (M, 3, H, W) in [0, 1] -> OrderedDict level -> (M, C, h, w)."""
        return self.fpn(self.body((images - self.mean) / self.std))

    def attend(self, bag: Features) -> Features:
        """Bag features (level -> (B, N', C, h, w), N' = len(image_offsets)) -> target features (B, C, h, w).

        In the ``"roi"`` location the target's own features come with ``"bag"``: the bag features themselves, for
        :class:`BagRoIAlign`.
        """
        if not self.use_attention:
            return OrderedDict((k, v[:, 0]) for k, v in bag.items())
        if self.location == "roi":
            return OrderedDict([*((k, v[:, self.target_index]) for k, v in bag.items()), ("bag", bag)])
        return OrderedDict((k, self.attention[k](v, self.target_index)) for k, v in bag.items())

    def forward(self, x: torch.Tensor) -> Features:
        b, c, h, w = x.shape
        if c != SLICES_PER_IMAGE * self.bag_size:
            raise ValueError(
                f"expected a bag of {self.bag_size} 2.5D images = {SLICES_PER_IMAGE * self.bag_size} channels, got {c}"
            )
        if not self.use_attention:
            start = SLICES_PER_IMAGE * self.target_index
            x = x[:, start : start + SLICES_PER_IMAGE]
        n = len(self.image_offsets)
        feats = self.image_features(x.reshape(b * n, SLICES_PER_IMAGE, h, w))
        return self.attend(OrderedDict((k, v.reshape(b, n, *v.shape[1:])) for k, v in feats.items()))


class BagRoIAlign(MultiScaleRoIAlign):
    """RoI align of every bag member's features, then volumetric attention over the bag (Table 2e "RCNN").

    Used in place of the box/mask ``MultiScaleRoIAlign`` when ``VABackbone.location == "roi"``: it reads the bag
    features from ``features["bag"]`` (level -> (B, N, C, h, w), target in the middle, as ``VABackbone.attend``
    gives them) and returns attended RoI features (R, C, s, s).
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int,
        sampling_ratio: int,
        channels: int,
        channel: bool = True,
        spatial: bool = True,
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.attention = VolumetricAttention(2, channels, channel=channel, spatial=spatial)

    def forward(self, features, proposals, image_shapes):
        if "bag" not in features:
            raise ValueError("BagRoIAlign reads features['bag'], which VABackbone.attend adds in location 'roi'")
        bag = features["bag"]
        n = next(iter(bag.values())).shape[1]
        pooled = [
            super(BagRoIAlign, self).forward({k: v[:, i] for k, v in bag.items()}, proposals, image_shapes)
            for i in range(n)
        ]
        return self.attention(torch.stack(pooled, dim=1), n // 2)


class VAMaskRCNN(BagDetector, MaskRCNN):
    """torchvision ``MaskRCNN`` on a :class:`VABackbone` (built by :func:`build_va_mask_rcnn`)."""


class VAFasterRCNN(BagDetector, FasterRCNN):
    """torchvision ``FasterRCNN`` on a :class:`VABackbone` (built by :func:`build_va_faster_rcnn`)."""


def _resnet_fpn(backbone: str, backbone_weights: str | None, trainable_layers: int, frozen_batchnorm: bool | None):
    """torchvision ResNet-FPN; ``backbone_weights`` is a torchvision weight name (downloads), None for random init."""
    weights = torchvision.models.get_weight(backbone_weights) if backbone_weights else None
    frozen = weights is not None if frozen_batchnorm is None else frozen_batchnorm
    return resnet_fpn_backbone(
        backbone_name=backbone,
        weights=weights,
        norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
    )


def _build(
    detector: type,
    num_classes: int,
    bag_size: int,
    attention: bool,
    channel: bool,
    spatial: bool,
    location: str,
    min_size: int,
    max_size: int,
    backbone: str,
    backbone_weights: str | None,
    trainable_backbone_layers: int,
    frozen_batchnorm: bool | None,
    anchor_sizes: Sequence[int] | None,
    **kwargs,
):
    va_backbone = VABackbone(
        _resnet_fpn(backbone, backbone_weights, trainable_backbone_layers, frozen_batchnorm),
        bag_size,
        attention=attention,
        channel=channel,
        spatial=spatial,
        location=location,
    )
    levels = [lvl for lvl in va_backbone.levels if lvl != "pool"]
    if anchor_sizes is not None:
        if len(anchor_sizes) != len(va_backbone.levels):
            raise ValueError(
                f"anchor_sizes needs one size per FPN level ({len(va_backbone.levels)}), got {anchor_sizes}"
            )
        # three aspect ratios per location as torchvision's default, so COCO RPN heads still fit
        ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
        kwargs["rpn_anchor_generator"] = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ratios)
    if attention and location == "roi":
        kwargs["box_roi_pool"] = BagRoIAlign(levels, 7, 2, va_backbone.out_channels, channel, spatial)
        if detector is VAMaskRCNN:
            kwargs["mask_roi_pool"] = BagRoIAlign(levels, 14, 2, va_backbone.out_channels, channel, spatial)
    return detector(
        va_backbone,
        num_classes=num_classes,
        min_size=min_size,
        max_size=max_size,
        image_mean=[0.0],  # normalisation happens per 3-channel image inside VABackbone
        image_std=[1.0],
        **kwargs,
    )


def build_va_mask_rcnn(
    num_classes: int = 3,
    bag_size: int = 9,
    attention: bool = True,
    channel: bool = True,
    spatial: bool = True,
    location: str = "rpn",
    min_size: int = 1024,
    max_size: int = 1024,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    trainable_backbone_layers: int = 5,
    frozen_batchnorm: bool | None = None,
    anchor_sizes: Sequence[int] | None = None,
    **kwargs,
) -> VAMaskRCNN:
    """VA Mask R-CNN for LiTS (sec. 3.2): classes background, liver, lesion; bag of 9 images (27 slices), 1024 px.

    ``attention=False`` is the baseline 2.5D Mask R-CNN (target image only) with the same input. ``backbone_weights``
    (e.g. ``"ResNet50_Weights.IMAGENET1K_V1"``) downloads ImageNet weights: only when asked and online; COCO or
    DeepLesion detector weights are loaded afterwards with :func:`shared.networks.pretrained.load_pretrained`.
    ``frozen_batchnorm`` defaults to True with pretrained backbone weights (torchvision's rule); set it True too when
    loading a pretrained checkpoint, False when training from scratch. ``anchor_sizes``: one anchor size (pixels) per
    FPN level, default torchvision's (32, 64, 128, 256, 512), the paper's mmdetection anchors (scale 8 x strides
    4-64) at 1024 px; smaller images need smaller anchors. ``kwargs`` go to torchvision's ``MaskRCNN``
    (e.g. ``box_detections_per_img``, ``rpn_batch_size_per_image``).
    """
    return _build(
        VAMaskRCNN,
        num_classes,
        bag_size,
        attention,
        channel,
        spatial,
        location,
        min_size,
        max_size,
        backbone,
        backbone_weights,
        trainable_backbone_layers,
        frozen_batchnorm,
        anchor_sizes,
        **kwargs,
    )


def build_va_faster_rcnn(
    num_classes: int,
    bag_size: int = 3,
    attention: bool = True,
    channel: bool = True,
    spatial: bool = True,
    location: str = "rpn",
    min_size: int = 512,
    max_size: int = 512,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    trainable_backbone_layers: int = 5,
    frozen_batchnorm: bool | None = None,
    anchor_sizes: Sequence[int] | None = None,
    **kwargs,
) -> VAFasterRCNN:
    """VA Faster R-CNN-FPN (sec. 3.3, DeepLesion): bag of 3 images (9 slices), 512 px, ResNet-50.

    Same arguments and input format as :func:`build_va_mask_rcnn`; ``num_classes`` includes the background
    (2 for lesion vs background).
    """
    return _build(
        VAFasterRCNN,
        num_classes,
        bag_size,
        attention,
        channel,
        spatial,
        location,
        min_size,
        max_size,
        backbone,
        backbone_weights,
        trainable_backbone_layers,
        frozen_batchnorm,
        anchor_sizes,
        **kwargs,
    )
