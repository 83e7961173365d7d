"""3DCE with CS-Att: backbone shapes, position-sensitive maps, one training step, inference and the feature split."""

import pytest
import torch

from shared.networks.bag_detector import BagBackbone
from shared.networks.three_dce import ThreeDCE, ThreeDCEBackbone, build_slice_backbone


def _tiny(num_images=3, **kwargs) -> ThreeDCE:
    torch.manual_seed(0)
    return ThreeDCE(num_images=num_images, backbone="tiny", fc_channels=64, **kwargs)


def test_vgg16_without_pool4_has_stride_8_and_512_channels():
    body, channels = build_slice_backbone("vgg16")
    assert channels == 512
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in body) == 3  # pool1-3 kept, pool4 and pool5 removed
    assert isinstance(body[-1], torch.nn.ReLU)  # ends at relu5_3
    with torch.no_grad():
        assert body(torch.zeros(1, 3, 32, 48)).shape == (1, 512, 4, 6)


def test_resnet50_option_has_stride_8():
    body, channels = build_slice_backbone("resnet50")
    with torch.no_grad():
        assert body.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, channels, 4, 4)


def test_resnet18_option_has_stride_8_and_128_channels():
    body, channels = build_slice_backbone("resnet18")
    assert channels == 128
    with torch.no_grad():
        assert body.eval()(torch.zeros(1, 3, 40, 32)).shape == (1, 128, 5, 4)


@pytest.mark.parametrize("m", [3, 5])
def test_backbone_outputs_key_features_and_m_times_490_ps_maps(m):
    torch.manual_seed(0)
    backbone = ThreeDCEBackbone(num_images=m, backbone="tiny")
    x = torch.rand(2, 3 * m, 64, 48)
    out, maps = backbone.attend_with_maps(backbone.bag_features(x))
    assert out["key"].shape == (2, 32, 8, 6)
    assert out["ps"].shape == (2, m * 490, 8, 6)
    assert maps["contextual"].shape == (2, m, 32, 8, 6) and maps["spatial"].shape == (2, m, 32, 8, 6)


def test_key_features_come_from_the_middle_image_and_ps_maps_are_per_image():
    torch.manual_seed(0)
    # identity normalisation, so the body sees the images as given
    backbone = ThreeDCEBackbone(3, "tiny", contextual=False, spatial=False, image_mean=(0.0,) * 3, image_std=(1.0,) * 3)
    x = torch.rand(1, 9, 32, 32)
    with torch.no_grad():
        out = backbone(x)
        middle = backbone.body(x[:, 3:6])
        first_ps = backbone.ps_conv(backbone.body(x[:, 0:3]))
    assert torch.allclose(out["key"], middle, atol=1e-6)
    assert torch.allclose(out["ps"][:, :490], first_ps, atol=1e-6)


def test_wrong_channel_count_and_even_m_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        ThreeDCEBackbone(num_images=4, backbone="tiny")
    with pytest.raises(ValueError, match="9 channels"):
        ThreeDCEBackbone(num_images=3, backbone="tiny")(torch.rand(1, 6, 32, 32))


def test_one_training_step_gives_finite_rpn_and_roi_losses():
    model = _tiny().train()
    images = [torch.rand(9, 64, 80), torch.rand(9, 72, 64)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 30.0, 34.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 20.0, 40.0, 36.0], [5.0, 5.0, 15.0, 20.0]]), "labels": torch.tensor([1, 1])},
    ]
    losses = model(images, targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sum(losses.values()).backward()
    assert model.backbone.attention.phi_c.weight.grad.abs().sum() > 0
    assert model.backbone.ps_conv.weight.grad.abs().sum() > 0
    optimizer.step()


def test_eval_returns_boxes_inside_the_image():
    model = _tiny(num_images=5).eval()
    with torch.no_grad():
        out = model([torch.rand(15, 60, 70)])
    assert set(out[0]) == {"boxes", "scores", "labels"}
    boxes = out[0]["boxes"]
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 70).all() and (boxes[:, 3] <= 60).all()


def test_image_offsets_are_centres_of_three_slice_images():
    assert ThreeDCEBackbone(num_images=5, backbone="tiny").image_offsets == [-6, -3, 0, 3, 6]


def test_attention_maps_are_max_normalized():
    model = _tiny().eval()
    maps = model.attention_maps([torch.rand(9, 32, 32)])
    assert torch.allclose(maps["contextual"].amax(dim=1), torch.ones(1, 32, 4, 4))
    assert torch.allclose(maps["spatial"].amax(dim=(3, 4)), torch.ones(1, 3, 32))


def test_detect_from_precomputed_features_equals_the_forward():
    """The inferers' path (image features -> bag -> attend -> detect) gives model(images)'s detections."""
    model = _tiny(box_score_thresh=0.0).eval()
    assert isinstance(model.backbone, BagBackbone)
    images = [torch.rand(9, 40, 48, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        direct = model(images)
        image_list, _ = model.transform(images)
        single = image_list.tensors.reshape(3, 3, *image_list.tensors.shape[-2:])  # the M images, key in the middle
        bag = {k: v[None] for k, v in model.backbone.image_features(single).items()}
        losses, detected = model.detect(image_list, model.backbone.attend(bag), [(40, 48)])
    assert losses == {} and len(direct[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(detected[0][key], direct[0][key])


@pytest.mark.parametrize("rpn_attended", [True, False])
def test_rpn_reads_the_attended_or_the_unattended_key_image(rpn_attended):
    """``rpn_attended`` (default true) decides what the RPN head sees: the key image after CS-Att, or the key
    image's backbone features before it; the RoI heads' position-sensitive maps are attended either way."""
    model = _tiny(rpn_attended=rpn_attended).eval()
    seen = []
    model.rpn.head.register_forward_hook(lambda module, args, out: seen.append(args[0][0]))
    images = [torch.rand(9, 48, 40, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        model(images)
        image_list, _ = model.transform(images)
        bag = model.backbone.bag_features(image_list.tensors)
        attended = model.backbone.attend(bag)
    unattended = bag["body"][:, 1]
    assert not torch.allclose(attended["key"], unattended, atol=1e-3)  # CS-Att changes the key image
    torch.testing.assert_close(seen[0], attended["key"] if rpn_attended else unattended)
    assert ("key_unattended" in attended) is not rpn_attended


def test_degenerate_target_boxes_are_refused():
    model = _tiny().train()
    target = {"boxes": torch.tensor([[10.0, 12.0, 10.0, 34.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="positive height and width"):
        model([torch.rand(9, 64, 64)], [target])
