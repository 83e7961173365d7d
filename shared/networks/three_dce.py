"""3DCE (Yan et al., MICCAI 2018) with contextual and spatial attention (Tao et al., MICCAI 2019, CS-Att sec. 2).

The detector is a torchvision ``GeneralizedRCNN`` (a transform, a backbone, an RPN and RoI heads, each injected) with
the detection flow of :class:`shared.networks.bag_detector.BagDetector`.

- Input: ``3M``-channel images, M three-slice images stacked on the channel axis with the key slice in the middle
  image's middle channel (CS-Att sec. 2), already windowed to [0, 1] and rescaled (``shared.transforms.deeplesion``),
  so the transform neither normalises nor resizes; it only pads a batch to a multiple of ``size_divisible``.
- Backbone (:class:`ThreeDCEBackbone`): each 3-channel image normalised with ``image_mean``/``image_std`` (default:
  the ImageNet statistics torchvision's VGG-16 weights expect; 3DCE fed its Caffe VGG-16 the [0, 255] window minus a
  pixel mean of 50, i.e. mean 50/255 and std 1/255 here), then one 2D network shared by the M images (VGG-16 up to
  relu5_3 with pool4 removed, stride 8, as 3DCE; ImageNet weights via :func:`load_vgg16_imagenet`), CS-Att on the
  M relu5_3 maps (sec. 2.1-2.2), then per image a 1x1 convolution to ``7 x 7 x 10`` position-sensitive channels,
  the M maps concatenated along channels (``M * 490``, sec. 2, 3DCE).
  It returns ``{"key": features of the key image, "ps": concatenated position-sensitive maps}`` and follows the 2.5D
  backbone contract of :class:`shared.networks.bag_detector.BagBackbone`.
- RPN: torchvision's RPN on the key image's features only (``rpn_feature_names``), anchors 16, 24, 32, 48, 96 px at
  ratios 0.5, 1, 2 (3DCE): by default the attended ones; ``rpn_attended`` false gives it the key image's features
  before CS-Att, as the authors' released code does (``rcnn/symbol/symbol_vgg.py``: ``_get_rpn`` reads ``relu5_3``,
  the attention sits in the R-FCN head; the paper does not say).
- RoI heads: torchvision's ``RoIHeads`` (sampling, losses, post-processing) with position-sensitive RoI align
  (:class:`PSRoIAlignPool`, 7 x 7 bins -> ``M * 10`` channels), one 2048-unit fully connected layer and
  ``FastRCNNPredictor`` (the "improved R-FCN" of 3DCE).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import ps_roi_align, roi_align
from torchvision.ops._utils import convert_boxes_to_roi_format

from shared.errors import InputError
from shared.networks.bag_detector import BagDetector, padded_detections
from shared.networks.blocks.contextual_spatial_attention import ContextualSpatialAttention
from shared.networks.pretrained import LoadReport, load_pretrained

BACKBONES = ("vgg16", "resnet50", "resnet18", "tiny")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features indices of the convs
VGG16_POOL4 = 23


def build_slice_backbone(name: str = "vgg16", weights: str | None = None) -> tuple[nn.Module, int]:
    """A 2D backbone of stride 8 for one 3-channel slice image and its output channels.

    - ``vgg16``: torchvision VGG-16 ``features`` up to relu5_3 with pool4 removed (3DCE), 512 channels.
    - ``resnet50``: conv1..layer3 of ResNet-50 with layer3 dilated instead of strided, 1024 channels.
    - ``resnet18``: conv1..layer2 of ResNet-18 (stride 8 without dilation, which its basic blocks do not support),
      128 channels: a light option for CPU demos.
    - ``tiny``: three strided 3x3 convolutions, 32 channels, for tests and CPU smoke runs.

    ``weights`` is passed to torchvision (``None``: random initialisation; ``"DEFAULT"``: ImageNet, as CS-Att sec. 3,
    which needs the weights file to be downloadable or in the torch hub cache).
    """
    if name == "vgg16":
        features = torchvision.models.vgg16(weights=weights).features
        # indices: 23 = pool4 (removed, stride 16 -> 8), 29 = relu5_3 (kept), 30 = pool5 (dropped)
        return nn.Sequential(*features[:23], *features[24:30]), 512
    if name == "resnet50":
        net = torchvision.models.resnet50(weights=weights, replace_stride_with_dilation=[False, True, False])
        return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3), 1024
    if name == "resnet18":
        net = torchvision.models.resnet18(weights=weights)
        return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2), 128
    if name == "tiny":
        layers: list[nn.Module] = []
        for cin, cout in ((3, 16), (16, 32), (32, 32)):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers), 32
    raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")


class ThreeDCEBackbone(nn.Module):
    """Shared 2D backbone over M slice images + CS-Att + position-sensitive maps (3DCE / CS-Att Fig. 1).

    Input ``(B, 3M, H, W)``; output ``{"key": (B, D, H/8, W/8), "ps": (B, M*K*K*C, H/8, W/8)}`` with ``K``
    ``ps_size`` and ``C`` ``ps_channels``, and with ``rpn_attended`` false ``"key_unattended"``: the key image's
    features before CS-Att, which the RPN then reads. :attr:`image_offsets`, :meth:`image_features` and
    :meth:`attend` split the forward pass (:class:`~shared.networks.bag_detector.BagBackbone`) so the whole-volume
    inferer computes each slice image's features once and reuses them for neighbouring key slices.
    """

    def __init__(
        self,
        num_images: int = 5,
        backbone: str = "vgg16",
        backbone_weights: str | None = None,
        contextual: bool = True,
        spatial: bool = True,
        ps_size: int = 7,
        ps_channels: int = 10,
        attention_kernel_size: int = 3,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        rpn_attended: bool = True,
    ) -> None:
        super().__init__()
        if num_images < 1 or num_images % 2 == 0:
            raise ValueError(f"num_images (M) must be odd so the key image is in the middle, got {num_images}")
        self.num_images = num_images
        self.rpn_attended = rpn_attended
        self.rpn_feature_names = ("key",) if rpn_attended else ("key_unattended",)
        self.register_buffer("mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.body, self.out_channels = build_slice_backbone(backbone, backbone_weights)
        self.attention = ContextualSpatialAttention(
            self.out_channels, spatial_dims=2, contextual=contextual, spatial=spatial, kernel_size=attention_kernel_size
        )
        # 1x1 convolution to K*K*C position-sensitive channels, shared by the M images (3DCE improved R-FCN);
        # no activation: the fully connected layer after the pooling has its own
        self.ps_conv = nn.Conv2d(self.out_channels, ps_size * ps_size * ps_channels, 1)

    @property
    def image_offsets(self) -> list[int]:
        """Centres of the M slice images in (2 mm) slices from the key slice: ``3 (i - M // 2)``."""
        return [3 * (i - self.num_images // 2) for i in range(self.num_images)]

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of 3-channel slice images in [0, 1], normalised with ``image_mean``/``image_std``:
        ``(N, 3, H, W) -> {"body": (N, D, H/8, W/8)}``."""
        return {"body": self.body((images - self.mean) / self.std)}

    def split_images(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3M, H, W) -> (B*M, 3, H, W)``, images in slice order."""
        if x.shape[1] != 3 * self.num_images:
            raise ValueError(
                f"expected {3 * self.num_images} channels (M={self.num_images} images of 3), got {x.shape[1]}"
            )
        return x.reshape([x.shape[0] * self.num_images, 3] + list(x.shape[2:]))

    def attend_with_maps(self, bag: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Attention and position-sensitive maps from per-image features ``{"body": (B, M, D, h, w)}``, and the
        CS-Att maps."""
        attended, maps = self.attention.attend(bag["body"])
        b, m = attended.shape[0], attended.shape[1]
        ps = self.ps_conv(attended.flatten(0, 1))
        ps = ps.reshape([b, m * ps.shape[1]] + list(ps.shape[2:]))
        features = {"key": attended[:, m // 2], "ps": ps}
        if not self.rpn_attended:
            features["key_unattended"] = bag["body"][:, m // 2]
        return features, maps

    def attend(self, bag: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Attention and position-sensitive maps from per-image features ``{"body": (B, M, D, h, w)}``."""
        return self.attend_with_maps(bag)[0]

    def bag_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image features of bags ``(B, 3M, H, W)``: ``{"body": (B, M, D, h, w)}``."""
        feats = self.image_features(self.split_images(x))["body"]
        return {"body": feats.reshape([x.shape[0], self.num_images] + list(feats.shape[1:]))}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.attend(self.bag_features(x))


class PSRoIAlignPool(nn.Module):
    """Position-sensitive RoI align (R-FCN) on ``features[featmap_name]`` with torchvision's ``ps_roi_align``.

    Called like torchvision's box RoI pool: ``(features, proposals, image_shapes) -> (K, C / size^2, size, size)``.
    """

    def __init__(self, featmap_name: str = "ps", output_size: int = 7, stride: int = 8, sampling_ratio: int = 2):
        super().__init__()
        self.featmap_name = featmap_name
        self.output_size = output_size
        self.spatial_scale = 1.0 / stride
        self.sampling_ratio = sampling_ratio

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        rois = convert_boxes_to_roi_format(proposals)
        if not torch.jit.is_scripting():
            if torch.onnx.is_in_onnx_export():  # ONNX has no position-sensitive RoI align: the same from RoiAlign
                return ps_roi_align_by_roi_align(
                    features[self.featmap_name], rois, self.output_size, self.spatial_scale, self.sampling_ratio
                )
        return ps_roi_align(
            features[self.featmap_name], rois, self.output_size, self.spatial_scale, self.sampling_ratio
        )


def ps_roi_align_by_roi_align(
    features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> torch.Tensor:
    """torchvision's ``ps_roi_align`` from one ``roi_align`` call, for the ONNX export (ONNX has ``RoiAlign`` but no
    position-sensitive variant, nor has torchvision an ONNX symbolic for it).

    Output bin ``(i, j)`` of channel ``c`` averages the same samples of input channel ``c K^2 + i K + j`` inside bin
    ``(i, j)`` of the RoI. So: the ``K^2`` channel groups become images of a batch (group ``p = i K + j`` is image
    ``b K^2 + p``), each RoI becomes ``K^2`` sub-boxes, one per bin, each pooled to one value by ``roi_align`` with
    ``aligned=True`` (``ps_roi_align``'s half-pixel offset) on its group's image: the same samples, the same work.
    """
    k = output_size
    b, channels, height, width = features.shape
    groups = features.reshape(b, channels // (k * k), k * k, height, width).transpose(1, 2)
    groups = groups.reshape(b * k * k, channels // (k * k), height, width)
    steps = torch.arange(k, dtype=rois.dtype, device=rois.device)
    i, j = steps.repeat_interleave(k), steps.repeat(k)  # bin p = i K + j
    x1, y1, x2, y2 = rois[:, 1:2], rois[:, 2:3], rois[:, 3:4], rois[:, 4:5]  # (R, 1) each
    bin_w, bin_h = (x2 - x1) / k, (y2 - y1) / k
    sub = torch.stack(
        [
            rois[:, 0:1] * (k * k) + (i * k + j),
            x1 + j * bin_w,
            y1 + i * bin_h,
            x1 + (j + 1) * bin_w,
            y1 + (i + 1) * bin_h,
        ],
        dim=2,
    )  # (R, K^2, 5)
    pooled = roi_align(groups, sub.reshape(-1, 5), 1, spatial_scale, sampling_ratio, aligned=True)  # (R K^2, C, 1, 1)
    return pooled.reshape(rois.shape[0], k, k, -1).permute(0, 3, 1, 2)


class PaddingOnlyTransform(GeneralizedRCNNTransform):
    """Batches images (padding to ``size_divisible``) without normalising or resizing them.

    DeepLesion images are windowed and rescaled to 0.8 mm/pixel by the preprocessing (3DCE), so boxes stay in the
    preprocessed image's pixels.
    """

    def __init__(self, size_divisible: int = 8):
        super().__init__(min_size=1, max_size=1, image_mean=[0.0], image_std=[1.0], size_divisible=size_divisible)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected a floating point image (windowed to [0, 1]), got {image.dtype}")
        return image

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


class ThreeDCE(BagDetector, GeneralizedRCNN):
    """3DCE detector with CS-Att (Tao et al. 2019), torchvision detection contract.

    ``model(images, targets)`` in train mode returns the loss dict (``loss_objectness``, ``loss_rpn_box_reg``,
    ``loss_classifier``, ``loss_box_reg``); in eval mode ``model(images)`` returns per image ``{"boxes", "scores",
    "labels"}``. ``images`` is a list of ``(3M, H, W)`` float tensors; boxes ``(x1, y1, x2, y2)`` in pixels. A
    batched tensor ``(B, 3M, H, W)`` in eval mode gives the padded detections of :meth:`batch_outputs`.

    Args:
        num_images: M three-slice images (3, 5, 7 => 9, 15, 21 slices, CS-Att Table 1; 5 in its ablations).
        backbone: ``vgg16`` (3DCE), ``resnet50``, ``resnet18`` or ``tiny``; ``backbone_weights`` as torchvision's
            ``weights``.
        contextual, spatial: CS-Att switches (Table 3 ablation; both off = plain 3DCE).
        num_classes: including background (2: lesion / not).
        anchor_sizes, aspect_ratios: RPN anchors in pixels (3DCE: 16, 24, 32, 48, 96 and 0.5, 1, 2).
        image_mean, image_std: per-channel normalisation of each 3-channel image in [0, 1] (default ImageNet's, for
            torchvision's VGG-16 weights; 3DCE's Caffe VGG-16 input, [0, 255] minus 50: 50/255 and 1/255).
        ps_size, ps_channels: position-sensitive grid (7) and channels per image (10) => 490 maps per image.
        fc_channels: the fully connected layer after the pooling (2048, improved R-FCN).
        rpn_attended: the RPN reads the attended key image (default) or, false, its features before CS-Att.
        rpn_*/box_*: torchvision RPN/RoIHeads parameters. Sampling sizes are those of the CS-Att authors' released
        3DCE configuration (``RPN_BATCH_SIZE: 32``, ``BATCH_ROIS: 32``, ``FG_FRACTION: 0.25``); the test-time NMS
        (0.3) and proposal numbers are the Faster R-CNN defaults 3DCE inherits. Its box-regression loss weight
        (``RCNN_REG_LOSS_WEIGHT: 10``) is the trainer's ``loss_weights`` (train.json ``box_loss_weight``).
    """

    def __init__(
        self,
        num_images: int = 5,
        backbone: str = "vgg16",
        backbone_weights: str | None = None,
        contextual: bool = True,
        spatial: bool = True,
        num_classes: int = 2,
        anchor_sizes: tuple[int, ...] = (16, 24, 32, 48, 96),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        ps_size: int = 7,
        ps_channels: int = 10,
        fc_channels: int = 2048,
        attention_kernel_size: int = 3,
        image_mean: tuple[float, ...] = IMAGENET_MEAN,
        image_std: tuple[float, ...] = IMAGENET_STD,
        size_divisible: int = 8,
        rpn_pre_nms_top_n_train: int = 12000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 6000,
        rpn_post_nms_top_n_test: int = 300,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 32,
        rpn_positive_fraction: float = 0.5,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 32,
        box_positive_fraction: float = 0.25,
        box_score_thresh: float = 0.001,
        box_nms_thresh: float = 0.3,
        box_detections_per_img: int = 100,
        rpn_attended: bool = True,
    ) -> None:
        body = ThreeDCEBackbone(
            num_images,
            backbone,
            backbone_weights,
            contextual,
            spatial,
            ps_size,
            ps_channels,
            attention_kernel_size,
            image_mean,
            image_std,
            rpn_attended,
        )
        anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
        rpn = RegionProposalNetwork(
            anchors,
            RPNHead(body.out_channels, anchors.num_anchors_per_location()[0]),
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            rpn_nms_thresh,
        )
        pooled = num_images * ps_channels * ps_size * ps_size
        roi_heads = RoIHeads(
            PSRoIAlignPool("ps", ps_size, stride=8),
            nn.Sequential(nn.Flatten(), nn.Linear(pooled, fc_channels), nn.ReLU(inplace=True)),
            FastRCNNPredictor(fc_channels, num_classes),
            box_fg_iou_thresh,
            box_bg_iou_thresh,
            box_batch_size_per_image,
            box_positive_fraction,
            None,
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
        )
        super().__init__(body, rpn, roi_heads, PaddingOnlyTransform(size_divisible))
        self.num_images = num_images
        self.backbone_name = backbone

    @torch.jit.unused
    def batch_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """Detections of a batched tensor ``(B, 3M, H, W)`` in eval mode as one padded float tensor ``(B, 1, K, 6)``,
        ``K`` = ``box_detections_per_img``: per image its detections by decreasing score as rows ``(x1, y1, x2, y2,
        score, label)``, the rest of the rows zero (label 0, background). The network output ``metadata.json``'s
        ``network_data_format`` describes (``verify_net_in_out``); a list of images gives torchvision's dicts."""
        return padded_detections(self.forward(list(images)), self.roi_heads.detections_per_img, images)

    @torch.no_grad()
    def attention_maps(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """CS-Att maps ``C''`` and ``S''`` (``(B, M, D, h, w)`` each, where switched on) for visualisation."""
        image_list, _ = self.transform(images)
        _, maps = self.backbone.attend_with_maps(self.backbone.bag_features(image_list.tensors))
        return maps


def vgg16_keys() -> dict[str, str]:
    """torchvision ``vgg16`` state-dict keys -> the :class:`ThreeDCE` keys of the same tensors (pool4 removed)."""
    keys = {}
    for i in VGG16_CONVS:
        for p in ("weight", "bias"):
            keys[f"features.{i}.{p}"] = f"backbone.body.{i - 1 if i > VGG16_POOL4 else i}.{p}"
    return keys


def load_vgg16_imagenet(model: ThreeDCE, path: str | Path) -> LoadReport:
    """torchvision's ImageNet VGG-16 weights (``vgg16-397923af.pth``) into the 3DCE VGG-16 backbone (CS-Att sec. 3:
    "We initialize the network using pre-trained ImageNet vgg-16 model"); the classifier is not used."""
    if model.backbone_name != "vgg16":
        raise InputError(
            f"--pretrained loads ImageNet VGG-16 weights, but the backbone is {model.backbone_name}: give --backbone"
            " vgg16, or --pretrained false (torchvision weights for other backbones: --backbone_weights DEFAULT)"
        )
    report = load_pretrained(model, path, prefixes=("backbone.body",), rename=vgg16_keys())
    if report.missing or report.mismatched:
        raise InputError(
            f"{path}: not torchvision's VGG-16 state dict ({len(report.missing)} of {2 * len(VGG16_CONVS)} conv"
            f" tensors missing, {len(report.mismatched)} of another shape); give vgg16-397923af.pth"
        )
    return report
