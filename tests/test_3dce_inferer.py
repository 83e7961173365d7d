"""Whole-volume box inference: cached slice-image features equal a direct forward, reuse counts, output geometry."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from shared.engines.inferers.deeplesion import run_inference
from shared.engines.inferers.volume_boxes import VolumeDetectionInferer, detect_volume
from shared.networks.three_dce import ThreeDCE
from shared.transforms.deeplesion import DeepLesionPreprocessing, LoadDeepLesionSampled


def _model():
    torch.manual_seed(0)
    return ThreeDCE(num_images=3, backbone="tiny", fc_channels=32, box_score_thresh=0.0).eval()


def _volume(shape=(32, 24, 8), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 300, shape) + np.arange(shape[2]) * 50).astype(np.float32)


def test_cached_features_match_direct_forward_and_each_image_is_computed_once():
    model, volume = _model(), _volume()
    inferer = VolumeDetectionInferer(DeepLesionPreprocessing(num_images=3), batch_size=3)
    results = inferer(model, volume, (0.8, 0.8, 2.0))
    assert len(results) == volume.shape[2]
    # 2 mm slices: image centres are whole slices; distinct clamped images: the Z centred inside plus the two
    # fully-replicated end images (every slice position clamped to 0, or to Z - 1)
    assert inferer.stats == {"images_requested": 3 * 8, "images_computed": 8 + 2}
    key = 4
    positions = np.clip(np.arange(key - 4, key + 5), 0, 7)
    image = np.clip((volume[:, :, positions].transpose(2, 1, 0) + 1024) / 4095, 0, 1)
    with torch.no_grad():
        direct = model([torch.from_numpy(image.astype(np.float32))])[0]
    assert len(direct["boxes"]) > 0
    assert torch.allclose(results[key]["boxes"], direct["boxes"], atol=1e-3)
    assert torch.allclose(results[key]["scores"], direct["scores"], atol=1e-4)


def test_boxes_are_scaled_back_to_the_slice_pixels():
    model, volume = _model(), _volume((64, 48, 3))
    results = VolumeDetectionInferer(DeepLesionPreprocessing(num_images=3))(model, volume, (0.4, 0.4, 5.0))
    boxes = torch.cat([r["boxes"] for r in results])
    assert len(boxes) > 0 and boxes[:, 2].max() <= 64 + 1e-3 and boxes[:, 3].max() <= 48 + 1e-3
    assert boxes[:, 2].max() > 32  # the 0.4 mm slices were processed at half size, boxes doubled back


def test_detect_volume_reports_input_slice_and_world_corners(tmp_path):
    # RAS input: working orientation (L, P, I) flips all three axes
    shape, affine = (32, 24, 6), np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 100.0]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_volume(shape), affine), str(path))
    inferer = VolumeDetectionInferer(DeepLesionPreprocessing(num_images=3))
    dets = detect_volume(_model(), path, inferer, tmp_path, label_threshold=0.0)
    assert dets and all(d["series"] == "ct" and d["axis"] == 2 for d in dets)
    for d in dets:
        (x1, y1, z1), (x2, y2, z2) = d["world_corners"]
        assert np.isclose(z1, 100.0 + 2.0 * d["slice"]) and np.isclose(z2, z1)
        # x: column towards patient left = decreasing input index along R; box edge x -> voxel (X - 0.5 - x)
        assert np.isclose(x1, -10.0 + 0.8 * (shape[0] - 0.5 - d["box"][0]), atol=1e-2)
        assert np.isclose(y1, 5.0 + 0.8 * (shape[1] - 0.5 - d["box"][1]), atol=1e-2)
    label = nib.load(str(tmp_path / "ct_boxes.nii.gz"))
    assert label.shape == shape and np.allclose(label.affine, affine)
    data = np.asarray(label.dataobj)
    for s in {d["slice"] for d in dets}:
        assert data[:, :, s].any()


def test_run_inference_writes_detections_json_for_volumes(tmp_path):
    nib.save(nib.Nifti1Image(_volume((24, 24, 4)), np.diag([0.8, 0.8, 2.5, 1])), str(tmp_path / "a.nii"))
    out = run_inference(_model(), tmp_path, tmp_path / "out", LoadDeepLesionSampled(num_images=3), label_threshold=None)
    data = json.loads(out.read_text())
    assert out.name == "detections.json" and {d["series"] for d in data["detections"]} == {"a"}
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_box_label_inferer_as_served_equals_the_box_volume_of_detect_volume(repo_root, tmp_path):
    """inference.json's preprocessing -> BoxLabelInferer -> postprocessing (MONAI Label's path) gives, in the input's
    space, exactly the `<volume>_boxes.nii.gz` of the CLI path, on a RAS volume (three axes flipped to L, P, I)."""
    from monai.bundle import ConfigParser

    from shared.engines.inferers.volume_boxes import WORKING_AXCODES

    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 100.0]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_volume((32, 24, 6)), affine), str(path))
    model = _model()
    detect_volume(model, path, VolumeDetectionInferer(DeepLesionPreprocessing(num_images=3)), tmp_path, 0.0)
    want = np.asarray(nib.load(str(tmp_path / "ct_boxes.nii.gz")).dataobj)
    assert want.any()

    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles" / "cs_att_deeplesion" / "configs" / "inference.json"))
    # MONAI Label runs no `initialize` and no dataset: these keys must build on their own
    parser.update({"dataset_dir": str(tmp_path / "missing"), "label_threshold": 0.0, "device": "cpu", "num_images": 3})
    parser.parse()
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    assert preprocessing.transforms[2].ornt_transform.axcodes == "".join(WORKING_AXCODES)
    data = preprocessing({"image": str(path)})
    data["pred"] = inferer(data["image"][None], model)[0]
    got = parser.get_parsed_content("postprocessing")(data)["pred"]
    assert tuple(got.shape) == (1, *want.shape)
    np.testing.assert_array_equal(got[0].numpy(), want)


def _inference_parser(repo_root, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles" / "cs_att_deeplesion" / "configs" / "inference.json"))
    tiny = {"device": "cpu", "num_images": 3, "backbone": "tiny", "network_def#fc_channels": 32, "amp": "false"}
    parser.update({**tiny, "label_threshold": 0.0, "min_score": 0.0, **overrides})
    parser.parse()
    return parser


def test_inference_output_knobs_name_and_type_the_box_volume(repo_root, tmp_path):
    """inference.json's top-level output_ext, output_dtype and output_postfix (the model zoo's knobs, as the two other
    bundles have them) reach the box volume's writer: the defaults give ct_boxes.nii.gz in uint8, other values
    another name, format and dtype."""
    volumes = tmp_path / "in"
    volumes.mkdir()
    nib.save(nib.Nifti1Image(_volume((32, 24, 6)), np.diag([0.8, 0.8, 2.0, 1.0])), str(volumes / "ct.nii.gz"))
    defaults = _inference_parser(repo_root, dataset_dir=str(volumes), output_dir=str(tmp_path / "default"))
    assert (defaults["output_ext"], defaults["output_postfix"]) == (".nii.gz", "boxes")
    defaults.get_parsed_content("evaluator")()
    written = nib.load(str(tmp_path / "default" / "ct_boxes.nii.gz"))
    assert written.get_data_dtype() == np.uint8

    knobs = {"output_ext": ".nii", "output_dtype": "$numpy.int16", "output_postfix": "bbox"}
    parser = _inference_parser(repo_root, dataset_dir=str(volumes), output_dir=str(tmp_path / "knobs"), **knobs)
    parser.get_parsed_content("evaluator")()
    assert sorted(p.name for p in (tmp_path / "knobs").iterdir()) == ["ct_bbox.nii", "detections.json"]
    written = nib.load(str(tmp_path / "knobs" / "ct_bbox.nii"))
    assert written.get_data_dtype() == np.int16 and written.shape == (32, 24, 6)


def test_a_box_volume_extension_nibabel_cannot_write_is_refused_before_any_work(tmp_path):
    from shared.engines.inferers.volume_boxes import box_volume_name
    from shared.errors import InputError

    assert box_volume_name("ct", "", "nii") == "ct.nii"
    with pytest.raises(InputError, match="output_ext '.nrrd': the box volume is a NIfTI file"):
        run_inference(_model(), tmp_path, tmp_path / "out", LoadDeepLesionSampled(num_images=3), output_ext=".nrrd")
    assert not (tmp_path / "out").exists()
