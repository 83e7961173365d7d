"""cs_att_deeplesion defaults are the papers' settings: CS-Att (paper 001) on 3DCE's released configuration, and the
VA Faster R-CNN overlay as paper 004 sec. 3.3; demo sizes live in scripts/cs_att_deeplesion_job.sh."""

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from shared.data.deeplesion import make_datalist
from shared.errors import InputError
from shared.networks.three_dce import ThreeDCE, ThreeDCEBackbone, load_vgg16_imagenet
from shared.phantoms.deeplesion import make_phantoms
from tests.test_user_errors import _train, _user_error

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cs_att_deeplesion" / "configs"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _parser(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in names])
    parser.update(overrides)
    return parser


@pytest.mark.parametrize("name", ["train.json", "inference.json"])
def test_black_border_clipped_as_3dce(name):
    """3DCE config ``IMG_DO_CLIP: True``: the loader crops to the body before rescaling; the knob can turn it off."""
    assert _parser(name).get_parsed_content("loader").params.clip_black_border is True
    off = _parser(name, clip_black_border="False").get_parsed_content("loader")
    assert off.params.clip_black_border is False


@pytest.mark.parametrize("name", ["train.json", "inference.json"])
def test_m_5_images_15_slices_normalised_for_imagenet_vgg16(name):
    """CS-Att ablations (Tables 2-3): 15 slices = M 5 images; each image normalised as the ImageNet VGG-16 expects."""
    parser = _parser(name)
    assert parser["num_images"] == 5 and parser["backbone"] == "vgg16"
    assert parser["image_mean"] == IMAGENET_MEAN and parser["image_std"] == IMAGENET_STD
    assert parser["network_def"]["anchor_sizes"] == [16, 24, 32, 48, 96]  # 3DCE ANCHOR_SCALES 2-12 x stride 8
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    assert meta["num_channels"] == 15 and meta["channel_def"]["7"].endswith(": key slice")


def test_head_32_rois_32_anchors_box_regression_weight_10():
    """3DCE config (CS-Att authors' release): BATCH_ROIS 32, RPN_BATCH_SIZE 32, RCNN_REG_LOSS_WEIGHT 10."""
    parser = _parser("train.json", backbone="tiny")
    net = parser["network_def"]
    assert net["box_batch_size_per_image"] == 32 and net["rpn_batch_size_per_image"] == 32
    assert parser.get_parsed_content("train#trainer#loss_weights") == {"loss_box_reg": 10.0}
    model = parser.get_parsed_content("network_def")
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert model.roi_heads.fg_bg_sampler.positive_fraction == 0.25
    assert model.rpn.fg_bg_sampler.batch_size_per_image == 32
    assert model.rpn.anchor_generator.sizes == ((16, 24, 32, 48, 96),)
    # the VA Faster R-CNN keeps torchvision's Faster R-CNN loss (paper 004: hyperparameters "as in [14]")
    va = _parser("train.json", "va_faster_rcnn.json")
    assert va.get_parsed_content("train#trainer#loss_weights") == {"loss_box_reg": 1.0}


def test_backbone_normalises_each_image_with_the_given_statistics():
    backbone = ThreeDCEBackbone(num_images=1, backbone="tiny")
    backbone.body = nn.Identity()
    images = torch.tensor([0.485, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = backbone.image_features(images)["body"][0, :, 0, 0]
    assert torch.allclose(out, torch.tensor([0.0, -0.456 / 0.224, (1 - 0.406) / 0.225]))


def test_pretrained_vgg16_is_on_by_default_and_only_for_vgg16():
    parser = _parser("train.json")
    assert parser.get_parsed_content("pretrained") is True
    assert parser["pretrained_url"] == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert "@load_pretrained" in parser["initialize"]
    assert _parser("train.json", backbone="resnet18").get_parsed_content("pretrained") is False
    assert _parser("train.json", "va_faster_rcnn.json").get_parsed_content("pretrained") is False


def test_vgg16_imagenet_weights_land_in_the_3dce_backbone(tmp_path):
    """torchvision's vgg16 keys (features.N) onto the backbone without pool4: conv5_1 (features.24) is body.23."""
    features = make_layers(cfgs["D"])
    path = tmp_path / "vgg16.pth"
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save({**state, "classifier.6.weight": torch.zeros(2, 2)}, path)
    model = ThreeDCE(num_images=1, backbone="vgg16", fc_channels=8)
    report = load_vgg16_imagenet(model, path)
    assert len(report.loaded) == 26 and not report.missing
    body = model.backbone.body
    assert torch.equal(body[0].weight, features[0].weight) and torch.equal(body[21].bias, features[21].bias)
    assert torch.equal(body[23].weight, features[24].weight) and torch.equal(body[27].weight, features[28].weight)

    torch.save({k: v for k, v in state.items() if not k.startswith("features.28")}, path)
    with pytest.raises(InputError, match="2 of 26 conv tensors missing"):
        load_vgg16_imagenet(ThreeDCE(num_images=1, backbone="vgg16", fc_channels=8), path)
    with pytest.raises(InputError, match="backbone is tiny"):
        load_vgg16_imagenet(ThreeDCE(num_images=1, backbone="tiny", fc_channels=8), path)


def test_default_training_without_the_vgg16_file_stops_with_one_line(tmp_path):
    line = _user_error(_train("cs_att_deeplesion", "--ckpt_dir", tmp_path / "models"))
    assert f"{tmp_path / 'models' / 'vgg16-397923af.pth'} not found" in line
    assert "download https://download.pytorch.org/models/vgg16-397923af.pth" in line and "--pretrained false" in line


def test_va_overlay_trains_on_train_and_val(tmp_path):
    """Paper 004 sec. 3.3: "training with the DeepLesion train and val sets, and testing on test set"."""
    assert _parser("train.json")["train_and_val"] is False
    assert _parser("train.json", "va_faster_rcnn.json")["train_and_val"] is True
    root = make_phantoms(tmp_path, num_cases=6, seed=0, image_size=64)
    plain, merged = make_datalist(root), make_datalist(root, train_and_val=True)
    assert plain["validation"] and merged["training"] == plain["training"] + plain["validation"]
    assert merged["validation"] == plain["validation"] and merged["test"] == plain["test"]
    parser = _parser("train.json", "va_faster_rcnn.json", dataset_dir=str(root))
    assert len(parser.get_parsed_content("datalist")["training"]) == len(merged["training"])
