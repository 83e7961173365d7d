"""load_pretrained: a torchvision-style detector checkpoint onto VA Mask R-CNN, with a report of the keys."""

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from shared.networks.pretrained import load_pretrained
from shared.networks.va_rcnn import build_va_faster_rcnn, build_va_mask_rcnn


@pytest.fixture(scope="module")
def coco_like_checkpoint(tmp_path_factory):
    """A plain torchvision Mask R-CNN (91 COCO classes, random weights) saved as a COCO checkpoint would be."""
    torch.manual_seed(1)
    detector = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    # torchvision's COCO weights come from FrozenBatchNorm2d models: no num_batches_tracked buffers
    state = {k: v for k, v in detector.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("ckpt") / "maskrcnn_coco.pth"
    torch.save(state, path)
    return path, state


def test_backbone_and_rpn_are_copied_and_the_rest_reported(coco_like_checkpoint):
    path, state = coco_like_checkpoint
    model = build_va_mask_rcnn(bag_size=3, min_size=64, max_size=64, frozen_batchnorm=True)
    heads_before = model.roi_heads.box_predictor.cls_score.weight.clone()
    report = load_pretrained(model, path)

    loaded = model.state_dict()
    expected = [k for k in state if k.startswith(("backbone.", "rpn."))]
    assert sorted(report.loaded) == sorted(expected)
    for key in (
        "backbone.body.layer1.0.conv1.weight",
        "backbone.fpn.layer_blocks.0.0.weight",
        "rpn.head.conv.0.0.weight",
    ):
        torch.testing.assert_close(loaded[key], state[key])
    # the VA blocks are new: reported missing; the class-specific heads are not touched
    assert report.missing and all(k.startswith("backbone.attention.") for k in report.missing)
    assert report.mismatched == [] and report.unexpected == []
    torch.testing.assert_close(model.roi_heads.box_predictor.cls_score.weight, heads_before)


def test_shape_mismatch_and_unknown_keys_are_reported(tmp_path, coco_like_checkpoint):
    _, state = coco_like_checkpoint
    state = dict(state)
    state["rpn.head.cls_logits.weight"] = torch.zeros(5, 256, 1, 1)  # 5 anchors instead of 3
    state["backbone.extra.weight"] = torch.zeros(2)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)  # MONAI CheckpointSaver + DDP layout
    model = build_va_faster_rcnn(num_classes=2, min_size=64, max_size=64, frozen_batchnorm=True)
    before = model.rpn.head.cls_logits.weight.clone()
    report = load_pretrained(model, path, prefixes=("rpn",))
    assert report.mismatched == [("rpn.head.cls_logits.weight", (5, 256, 1, 1), (3, 256, 1, 1))]
    assert report.unexpected == []  # backbone.extra is outside the requested prefixes
    assert all(k.startswith("rpn.") for k in report.loaded) and "rpn.head.conv.0.0.weight" in report.loaded
    torch.testing.assert_close(model.rpn.head.cls_logits.weight, before)
    assert "shape mismatch: rpn.head.cls_logits.weight" in report.summary()

    report = load_pretrained(model, path, prefixes=("backbone",))
    assert report.unexpected == ["backbone.extra.weight"]


def test_bad_checkpoint_files_get_clear_messages(tmp_path):
    model = build_va_faster_rcnn(num_classes=2, min_size=64, max_size=64, backbone="resnet18")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(model, tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_pretrained(model, corrupt)


def test_parts_by_name_one_name_as_a_string_and_bad_parts_refused(tmp_path, coco_like_checkpoint):
    """--pretrained_parts roi_heads arrives as a string: one part, not its letters; a part the detector lacks, or a
    checkpoint of which nothing fits, stops with one line naming them."""
    path, state = coco_like_checkpoint
    model = build_va_mask_rcnn(bag_size=3, min_size=64, max_size=64, frozen_batchnorm=True)
    report = load_pretrained(model, path, prefixes="rpn")
    assert sorted(report.loaded) == sorted(k for k in state if k.startswith("rpn."))
    with pytest.raises(ValueError, match=r"pretrained parts \['rpm'\]: VAMaskRCNN has no rpm; give some of"):
        load_pretrained(model, path, prefixes=["rpm"])
    other = tmp_path / "other.pt"
    torch.save({"rpn.head.conv.0.0.weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="no tensor of rpn fits VAMaskRCNN"):
        load_pretrained(model, other, prefixes="rpn")
