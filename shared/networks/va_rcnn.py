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
from collections.abc import Mapping, Sequence
from typing import Final

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from shared.networks.bag_detector import BagDetector, Features
from shared.networks.blocks.volumetric_attention import VolumetricAttention

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SLICES_PER_IMAGE = 3  # sec. 3.2: "we stack three adjacent axial slices into a 3-channel image"
LOCATIONS = ("rpn", "roi")
LIVER_CLASS, LESION_CLASS = 1, 2  # the VA Mask R-CNN's classes on LiTS after the background (sec. 3.2)


def paste_labels(
    detections: dict[str, torch.Tensor],
    shape: tuple[int, int],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    liver_label: int = LIVER_CLASS,
    lesion_label: int | None = LESION_CLASS,
    num_classes: int | None = None,
) -> torch.Tensor:
    """One slice's detections -> (H, W) label map (sec. 3.2): the masks of the detections scoring at least
    ``score_threshold``, binarised at ``mask_threshold``; lesions only inside the predicted liver ("the logical AND
    of the predicted liver and lesion masks"). ``lesion_label=None`` keeps every class as is.

    The classes are painted in increasing order with tensor operations only: those found, or with ``num_classes``
    (background included) every class 1 .. num_classes - 1 (one not found paints nothing, so the map is the same),
    a loop fixed in advance that an ONNX trace keeps (:meth:`VAMaskRCNN.batch_outputs`). ``shape`` is the masks'
    (H, W), torchvision's detections being pasted at the image's size."""
    masks = detections["masks"][:, 0] >= mask_threshold
    if tuple(masks.shape[1:]) != tuple(shape) and not torch.jit.is_tracing():
        raise ValueError(f"masks of {tuple(masks.shape[1:])} pixels for a label map of {tuple(shape)}")
    keep = detections["scores"] >= score_threshold
    labels = detections["labels"]
    out = torch.zeros_like(masks.any(dim=0), dtype=torch.float32)  # (H, W), also without detections
    classes = range(1, num_classes) if num_classes is not None else labels[keep].unique().tolist()

    def union(cls: int) -> torch.Tensor:
        return (masks & (keep & (labels == cls))[:, None, None]).any(dim=0)

    for cls in classes:
        if cls != lesion_label:
            out = torch.where(union(cls), float(cls), out)
    if lesion_label is not None:
        out = torch.where(union(lesion_label) & (out == liver_label), float(lesion_label), out)
    return out


class VABackbone(nn.Module):
    """Shared 2D ResNet-FPN over a bag of N 2.5D images + volumetric attention (VA paper Fig. 2).

    Args:
        fpn_backbone: torchvision ``BackboneWithFPN`` (3-channel images); its ``body`` and ``fpn`` are reused.
        bag_size: N, number of 2.5D images in the bag (input channels = 3N).
        attention: False gives the baseline 2.5D detector: only the target image is used (same input format).
        channel, spatial: switches of the VA block (Table 2d).
        block_options: further keyword arguments of every ``VolumetricAttention`` block (``spatial_scale``,
            ``gate_norm``, ``min_hidden``, ``spatial_relu``, ``sequential``, ``bag_residual``); none: the paper's form.
        location: ``"rpn"`` (default, Fig. 2): VA on every FPN level, one block per level (levels differ in scale
            and statistics, so they do not share weights); ``"roi"`` (Table 2e "RCNN"): the RPN sees the target's
            own features and VA is applied to RoI-aligned bag features by :class:`BagRoIAlign` in the heads, which
            read them from the ``"bag"`` entry :meth:`attend` adds.

    ``forward(x)``: x (B, 3N, H, W) in [0, 1] -> OrderedDict level -> (B, C, h, w), like ``BackboneWithFPN``
    (plus ``"bag"`` in the ``"roi"`` location). Scriptable (``torch.jit.script``) in the ``"rpn"`` location.
    """

    __jit_unused_properties__ = ["image_offsets"]
    slices_per_image: Final[int]
    bag_size: Final[int]
    target_index: Final[int]
    use_attention: Final[bool]
    attention_in_heads: Final[bool]
    images_per_bag: Final[int]

    def __init__(
        self,
        fpn_backbone: BackboneWithFPN,
        bag_size: int,
        attention: bool = True,
        channel: bool = True,
        spatial: bool = True,
        location: str = "rpn",
        block_options: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__()
        if bag_size < 1 or bag_size % 2 == 0:
            raise ValueError(f"bag_size must be odd (target in the middle), got {bag_size}")
        if location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")
        self.body = fpn_backbone.body
        self.fpn = fpn_backbone.fpn
        self.out_channels = fpn_backbone.out_channels
        self.slices_per_image = SLICES_PER_IMAGE
        self.bag_size = bag_size
        self.target_index = bag_size // 2
        self.use_attention = attention
        self.location = location
        self.attention_in_heads = attention and location == "roi"
        self.images_per_bag = bag_size if attention else 1
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        levels = list(self.body.return_layers.values())
        if isinstance(self.fpn.extra_blocks, LastLevelMaxPool):
            levels.append("pool")
        self.levels = levels
        self.rpn_feature_names = tuple(levels)
        if attention and location == "rpn":
            self.attention = nn.ModuleDict(
                {
                    lvl: VolumetricAttention(
                        2, self.out_channels, channel=channel, spatial=spatial, **(block_options or {})
                    )
                    for lvl in levels
                }
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

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """FPN features of 3-channel images (M, 3, H, W) in [0, 1] -> OrderedDict level -> (M, C, h, w)."""
        return self.fpn(self.body((images - self.mean) / self.std))

    def attend(self, bag: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bag features (level -> (B, N', C, h, w), N' = len(image_offsets)) -> target features (B, C, h, w).

        In the ``"roi"`` location the target's own features come with ``"bag"``: the bag features themselves, for
        :class:`BagRoIAlign` (eager mode only).
        """
        out: dict[str, torch.Tensor] = OrderedDict()
        if not self.use_attention:
            for name, features in bag.items():
                out[name] = features[:, 0]
        elif self.attention_in_heads:
            out = self._attend_in_heads(bag)
        else:
            for name, block in self.attention.items():
                out[name] = block(bag[name], self.target_index)
        return out

    def __prepare_scriptable__(self):
        if self.attention_in_heads:
            raise NotImplementedError("VA in the RoI heads (location 'roi') passes nested features: eager mode only")
        return self

    @torch.jit.unused
    def _attend_in_heads(self, bag: Features) -> Features:
        return OrderedDict([*((k, v[:, self.target_index]) for k, v in bag.items()), ("bag", bag)])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        expected = self.slices_per_image * self.bag_size
        if c != expected:
            raise ValueError(f"expected a bag of {self.bag_size} 2.5D images = {expected} channels, got {c}")
        if not self.use_attention:
            start = self.slices_per_image * self.target_index
            x = x[:, start : start + self.slices_per_image]
        n = self.images_per_bag
        feats = self.image_features(x.reshape(b * n, self.slices_per_image, h, w))
        bag: dict[str, torch.Tensor] = OrderedDict()
        for name, features in feats.items():
            bag[name] = features.reshape([b, n] + list(features.shape[1:]))
        return self.attend(bag)


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
        block_options: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.attention = VolumetricAttention(2, channels, channel=channel, spatial=spatial, **(block_options or {}))

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
    """torchvision ``MaskRCNN`` on a :class:`VABackbone` (built by :func:`build_va_mask_rcnn`).

    ``model(images)`` with a list of bags gives torchvision's detections; with a batched tensor of bags
    (B, 3N, H, W) in eval mode, the target slices' label maps (B, 1, H, W) (:meth:`batch_outputs`), the network
    output that ``metadata.json``'s ``network_data_format`` describes.
    """

    @torch.jit.unused
    def batch_outputs(self, images: torch.Tensor):
        """Label maps (B, 1, H, W), float: 0 background, 1 liver, 2 lesion, by :func:`paste_labels` with its
        defaults (those of the bundle's ``VolumeMaskInferer``).

        Under ``torch.onnx.export`` (one bag, B = 1) the tuple ``(label map (1, 1, H, W), boxes (K, 4), labels (K,),
        scores (K,), masks (K, 1, H, W))``: the label map and the detections it was painted from (docs/onnx.md)."""
        detections = self.forward(list(images))
        num_classes = self.roi_heads.box_predictor.cls_score.out_features
        shape = (images.shape[-2], images.shape[-1])
        maps = torch.stack([paste_labels(d, shape, num_classes=num_classes) for d in detections])[:, None]
        if torch.onnx.is_in_onnx_export():
            if len(detections) != 1:
                raise ValueError(f"the ONNX graph takes one bag (input shape (1, 3N, H, W)), got {len(detections)}")
            found = detections[0]
            return maps, found["boxes"], found["labels"], found["scores"], found["masks"]
        return maps


class VAFasterRCNN(BagDetector, FasterRCNN):
    """torchvision ``FasterRCNN`` on a :class:`VABackbone` (built by :func:`build_va_faster_rcnn`)."""


def _resnet_fpn(
    backbone: str, backbone_weights: str | None, trainable_layers: int, frozen_batchnorm: bool | None, channels: int
):
    """torchvision ResNet-FPN with ``channels`` FPN channels (torchvision's is 256); ``backbone_weights`` is a
    torchvision weight name (downloads), None for random init."""
    weights = torchvision.models.get_weight(backbone_weights) if backbone_weights else None
    frozen = weights is not None if frozen_batchnorm is None else frozen_batchnorm
    fpn_backbone = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=weights,
        norm_layer=FrozenBatchNorm2d if frozen else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
    )
    if channels != fpn_backbone.out_channels:
        in_channels = [block[0].in_channels for block in fpn_backbone.fpn.inner_blocks]
        fpn_backbone.fpn = FeaturePyramidNetwork(in_channels, channels, extra_blocks=LastLevelMaxPool())
        fpn_backbone.out_channels = channels
    return fpn_backbone


def _build(
    detector: type,
    num_classes: int,
    bag_size: int,
    attention: bool,
    channel: bool,
    spatial: bool,
    block_options: Mapping[str, object],
    location: str,
    min_size: int,
    max_size: int,
    backbone: str,
    backbone_weights: str | None,
    trainable_backbone_layers: int,
    frozen_batchnorm: bool | None,
    anchor_sizes: Sequence[int] | None,
    fpn_channels: int,
    **kwargs,
):
    va_backbone = VABackbone(
        _resnet_fpn(backbone, backbone_weights, trainable_backbone_layers, frozen_batchnorm, fpn_channels),
        bag_size,
        attention=attention,
        channel=channel,
        spatial=spatial,
        location=location,
        block_options=block_options,
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
        kwargs["box_roi_pool"] = BagRoIAlign(levels, 7, 2, va_backbone.out_channels, channel, spatial, block_options)
        if detector is VAMaskRCNN:
            kwargs["mask_roi_pool"] = BagRoIAlign(
                levels, 14, 2, va_backbone.out_channels, channel, spatial, block_options
            )
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
    spatial_scale: bool = False,
    gate_norm: bool = False,
    min_hidden: int = 1,
    spatial_relu: bool = True,
    sequential: bool = True,
    bag_residual: bool = False,
    location: str = "rpn",
    min_size: int = 1024,
    max_size: int = 1024,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    trainable_backbone_layers: int = 5,
    frozen_batchnorm: bool | None = None,
    anchor_sizes: Sequence[int] | None = None,
    fpn_channels: int = 256,
    **kwargs,
) -> VAMaskRCNN:
    """VA Mask R-CNN for LiTS (sec. 3.2): classes background, liver, lesion; bag of 9 images (27 slices), 1024 px.

    ``attention=False`` is the baseline 2.5D Mask R-CNN (target image only) with the same input; ``spatial_scale``
    (divide eq. 3's product by H*W), ``gate_norm`` (gates divided by their mean), ``min_hidden`` (fewest hidden
    units of eq. 2's embedding), ``spatial_relu`` (the spatial head's ReLU), ``sequential`` (spatial attention read
    from the channel-gated bag, sec. 1) and ``bag_residual`` (the attention-weighted bag added through a
    zero-initialised 1x1 convolution, not in the paper) go to every ``VolumetricAttention`` block (defaults: the
    paper's form).
    ``backbone_weights`` (e.g. ``"ResNet50_Weights.IMAGENET1K_V1"``) downloads ImageNet weights: only when asked and
    online; COCO or DeepLesion detector weights are loaded afterwards with
    :func:`shared.networks.pretrained.load_pretrained`. ``frozen_batchnorm`` defaults to True with pretrained
    backbone weights (torchvision's rule); set it True too when loading a pretrained checkpoint, False when training
    from scratch. ``anchor_sizes``: one anchor size (pixels) per FPN level, default torchvision's (32, 64, 128, 256,
    512), the paper's mmdetection anchors (scale 8 x strides 4-64) at 1024 px; smaller images need smaller anchors.
    ``fpn_channels``: channels of every FPN level and so of the VA blocks, RPN and RoI heads (256, torchvision's and
    mmdetection's; no COCO checkpoint fits another width).
    ``kwargs`` go to torchvision's ``MaskRCNN`` (e.g. ``box_detections_per_img``, ``rpn_batch_size_per_image``).
    """
    return _build(
        VAMaskRCNN,
        num_classes,
        bag_size,
        attention,
        channel,
        spatial,
        {
            "spatial_scale": spatial_scale,
            "gate_norm": gate_norm,
            "min_hidden": min_hidden,
            "spatial_relu": spatial_relu,
            "sequential": sequential,
            "bag_residual": bag_residual,
        },
        location,
        min_size,
        max_size,
        backbone,
        backbone_weights,
        trainable_backbone_layers,
        frozen_batchnorm,
        anchor_sizes,
        fpn_channels,
        **kwargs,
    )


def build_va_faster_rcnn(
    num_classes: int,
    bag_size: int = 3,
    attention: bool = True,
    channel: bool = True,
    spatial: bool = True,
    spatial_scale: bool = False,
    gate_norm: bool = False,
    min_hidden: int = 1,
    spatial_relu: bool = True,
    sequential: bool = True,
    bag_residual: bool = False,
    location: str = "rpn",
    min_size: int = 512,
    max_size: int = 512,
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    trainable_backbone_layers: int = 5,
    frozen_batchnorm: bool | None = None,
    anchor_sizes: Sequence[int] | None = None,
    fpn_channels: int = 256,
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
        {
            "spatial_scale": spatial_scale,
            "gate_norm": gate_norm,
            "min_hidden": min_hidden,
            "spatial_relu": spatial_relu,
            "sequential": sequential,
            "bag_residual": bag_residual,
        },
        location,
        min_size,
        max_size,
        backbone,
        backbone_weights,
        trainable_backbone_layers,
        frozen_batchnorm,
        anchor_sizes,
        fpn_channels,
        **kwargs,
    )
