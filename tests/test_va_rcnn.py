"""VA Mask R-CNN / VA Faster R-CNN on torchvision: backbone wrapper shapes, baseline switch, training steps."""

import pytest
import torch

from shared.networks.bag_detector import BagBackbone
from shared.networks.blocks.volumetric_attention import VolumetricAttention
from shared.networks.va_rcnn import VABackbone, build_va_faster_rcnn, build_va_mask_rcnn, paste_labels

SIZE = 64


def _tiny(builder=build_va_mask_rcnn, **kwargs):
    torch.manual_seed(0)
    args = {"bag_size": 3, "min_size": SIZE, "max_size": SIZE, "backbone": "resnet18"}
    if builder is build_va_faster_rcnn:
        args["num_classes"] = 2
    return builder(**{**args, **kwargs})


def _sample(n: int = 3):
    """One bag (3n, 64, 64) with a bright square (class 1) and its box/mask."""
    g = torch.Generator().manual_seed(0)
    image = 0.1 * torch.rand(3 * n, SIZE, SIZE, generator=g)
    image[:, 16:40, 20:48] += 0.8
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    mask[0, 16:40, 20:48] = 1
    target = {"boxes": torch.tensor([[20.0, 16.0, 48.0, 40.0]]), "labels": torch.tensor([1]), "masks": mask}
    return image, target


def test_wrapper_returns_fpn_shapes_and_keeps_torchvision_names():
    model = build_va_mask_rcnn(bag_size=5, min_size=SIZE, max_size=SIZE)  # ResNet-50 FPN, the paper's backbone
    backbone = model.backbone
    assert isinstance(backbone, VABackbone) and backbone.out_channels == 256
    assert backbone.image_offsets == [-6, -3, 0, 3, 6]
    assert set(backbone.attention) == {"0", "1", "2", "3", "pool"}
    assert all(isinstance(m, VolumetricAttention) for m in backbone.attention.values())
    feats = backbone(torch.rand(2, 15, SIZE, SIZE))
    assert [(k, tuple(v.shape)) for k, v in feats.items()] == [
        ("0", (2, 256, 16, 16)),
        ("1", (2, 256, 8, 8)),
        ("2", (2, 256, 4, 4)),
        ("3", (2, 256, 2, 2)),
        ("pool", (2, 256, 1, 1)),
    ]
    keys = model.state_dict().keys()
    assert "backbone.body.conv1.weight" in keys and "backbone.fpn.inner_blocks.0.0.weight" in keys
    with pytest.raises(ValueError, match="15 channels"):
        backbone(torch.rand(1, 9, SIZE, SIZE))


def test_wrapper_normalises_each_image_with_imagenet_statistics():
    backbone = _tiny().backbone.eval()
    image = torch.rand(1, 3, SIZE, SIZE)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = backbone.fpn(backbone.body((image - mean) / std))
    for key, value in backbone.image_features(image).items():
        torch.testing.assert_close(value, expected[key])


def test_baseline_reads_only_the_target_image():
    model = _tiny(attention=False).eval()
    assert not hasattr(model.backbone, "attention")
    assert model.backbone.image_offsets == [0]
    bag = torch.rand(1, 9, SIZE, SIZE)
    other = bag.clone()
    other[:, :3] = 0.0  # change the context images only
    other[:, 6:] = 1.0
    with torch.no_grad():
        a, b = model.backbone(bag), model.backbone(other)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_attention_reads_the_context_images():
    model = _tiny().eval()
    bag = torch.rand(1, 9, SIZE, SIZE)
    other = bag.clone()
    other[:, :3] = 0.0
    with torch.no_grad():
        assert not torch.allclose(model.backbone(bag)["0"], model.backbone(other)["0"])


def _train_losses(model, steps: int) -> list[float]:
    image, target = _sample(model.backbone.bag_size)
    if not isinstance(model.roi_heads.mask_roi_pool, torch.nn.Module):
        target = {k: v for k, v in target.items() if k != "masks"}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.003, momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss_dict = model([image], [target])
        loss = sum(loss_dict.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_va_mask_rcnn_trains_on_one_sample():
    model = _tiny()
    losses = _train_losses(model, 6)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    # the VA blocks take part in training
    assert all(p.grad is not None for p in model.backbone.attention.parameters())


def test_rcnn_location_and_faster_rcnn_train_one_step():
    roi_model = _tiny(location="roi")
    assert not hasattr(roi_model.backbone, "attention")
    losses = _train_losses(roi_model, 1)
    assert torch.isfinite(torch.tensor(losses)).all()
    assert all(p.grad is not None for p in roi_model.roi_heads.box_roi_pool.attention.parameters())

    faster = _tiny(build_va_faster_rcnn, anchor_sizes=[8, 16, 32, 64, 128])
    assert faster.rpn.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert torch.isfinite(torch.tensor(_train_losses(faster, 1))).all()


def test_fpn_channels_set_the_width_of_every_level_block_and_head():
    """A narrower FPN (a CPU demo size) reaches the VA blocks, the RPN and both RoI heads, and still trains."""
    model = _tiny(fpn_channels=64)
    backbone = model.backbone
    assert backbone.out_channels == 64
    assert all(block[0].out_channels == 64 for block in backbone.fpn.layer_blocks)
    assert [block[0].in_channels for block in backbone.fpn.inner_blocks] == [64, 128, 256, 512]  # ResNet-18 stages
    feats = backbone(torch.rand(1, 9, SIZE, SIZE))
    assert {v.shape[1] for v in feats.values()} == {64}
    assert model.rpn.head.conv[0][0].in_channels == 64
    assert model.roi_heads.box_head.fc6.in_features == 64 * 7 * 7
    assert model.roi_heads.mask_head[0][0].in_channels == 64
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in _tiny().parameters())
    assert torch.isfinite(torch.tensor(_train_losses(model, 1))).all()


def test_inference_returns_masks_in_input_size():
    model = _tiny().eval()
    image, _ = _sample()
    with torch.no_grad():
        (out,) = model([image])
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[1:] == (1, SIZE, SIZE)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="odd"):
        _tiny(bag_size=4)
    with pytest.raises(ValueError, match="location"):
        _tiny(location="head")
    with pytest.raises(ValueError, match="one size per FPN level"):
        _tiny(anchor_sizes=[8, 16])


@pytest.mark.parametrize("location", ["rpn", "roi"])
def test_detect_from_precomputed_features_equals_the_forward(location):
    """The inferers' path (image features -> bag -> attend -> detect) gives model(images)'s detections and masks."""
    model = _tiny(location=location, box_score_thresh=0.0).eval()
    assert isinstance(model.backbone, BagBackbone)
    image, _ = _sample()
    with torch.no_grad():
        direct = model([image])
        image_list, _ = model.transform([image])
        single = image_list.tensors.reshape(3, 3, *image_list.tensors.shape[-2:])  # the bag's 3 images in z order
        bag = {k: v[None] for k, v in model.backbone.image_features(single).items()}
        losses, detected = model.detect(image_list, model.backbone.attend(bag), [(SIZE, SIZE)])
    assert losses == {} and len(direct[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(detected[0][key], direct[0][key])


def test_rcnn_location_passes_the_bag_features_in_the_features():
    model = _tiny(location="roi").eval()
    backbone = model.backbone
    state = {k: id(v) for k, v in vars(backbone).items()}
    with torch.no_grad():
        features = backbone(torch.rand(2, 9, SIZE, SIZE))
    assert {k: id(v) for k, v in vars(backbone).items()} == state  # no features kept on the backbone
    assert list(features) == [*backbone.levels, "bag"] and "bag" not in backbone.rpn_feature_names
    assert [tuple(v.shape) for v in features["bag"].values()][0] == (2, 3, 256, 16, 16)
    torch.testing.assert_close(features["0"], features["bag"]["0"][:, 1])  # the RPN sees the target's own features
    proposals = [torch.tensor([[4.0, 4.0, 30.0, 30.0]])] * 2
    with pytest.raises(ValueError, match=r"features\['bag'\]"):
        model.roi_heads.box_roi_pool({k: features[k] for k in backbone.levels}, proposals, [(SIZE, SIZE)] * 2)
    pooled = model.roi_heads.box_roi_pool(features, proposals, [(SIZE, SIZE)] * 2)
    assert pooled.shape == (2, 256, 7, 7)


def test_paste_labels_keeps_lesions_inside_the_liver_only():
    """Liver (class 1) over columns 0-3, lesions (class 2) over columns 2-5 and a low-scoring liver elsewhere: the
    lesion is kept where it overlaps the liver (columns 2-3) and dropped outside; detections under 0.5 are ignored."""
    masks = torch.zeros(3, 1, 2, 8)
    masks[0, 0, :, 0:4] = 0.9
    masks[1, 0, :, 2:6] = 0.8
    masks[2, 0, :, 6:8] = 0.9
    detections = {
        "boxes": torch.zeros(3, 4),
        "scores": torch.tensor([0.9, 0.7, 0.3]),
        "labels": torch.tensor([1, 2, 1]),
        "masks": masks,
    }
    expected = torch.tensor([[1.0, 1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0]] * 2)
    torch.testing.assert_close(paste_labels(detections, (2, 8)), expected)


def test_batched_tensor_gives_the_target_slices_label_maps():
    """model(tensor (B, 3N, H, W)) in eval mode: the label maps metadata.json describes, pasted from the detections
    model(list) gives; a list keeps torchvision's detections."""
    model = _tiny(box_score_thresh=0.0).eval()
    bags = torch.rand(2, 9, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps = model(bags)
        detections = model(list(bags))
    assert maps.shape == (2, 1, SIZE, SIZE) and maps.dtype == torch.float32
    assert isinstance(detections, list) and set(detections[0]) == {"boxes", "scores", "labels", "masks"}
    for b in range(2):
        torch.testing.assert_close(maps[b, 0], paste_labels(detections[b], (SIZE, SIZE)))


@pytest.mark.parametrize("kwargs", [{}, {"attention": False}, {"channel": False, "spatial_scale": True}])
def test_scripted_model_finds_the_eager_detections(kwargs):
    """torch.jit.script (ckpt_export) compiles the VA Mask R-CNN; it returns torchvision's (losses, detections)."""
    model = _tiny(box_score_thresh=0.0, **kwargs).eval()
    image, _ = _sample()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        (expected,) = model([image])
        losses, (found,) = scripted([image])
    assert losses == {} and len(expected["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(found[key], expected[key])


def test_rcnn_location_is_not_scriptable_and_says_so():
    with pytest.raises(NotImplementedError, match="eager mode only"):
        torch.jit.script(_tiny(location="roi"))
