"""ONNX export of each bundle's network_def with `python -m monai.bundle onnx_export` (docs/onnx.md), checked with
ONNX Runtime (CPU) against the eager network on a phantom CT: segmentation logits within 1e-3, detections the same
boxes within 0.5 px and scores within 1e-3 (issue 24). Tiny networks, random weights; each export is the user's
command, run from the bundle's folder (benchmarks.onnx_benchmark.export_command)."""

import ast
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import ps_roi_align

from benchmarks.onnx_benchmark import OPSET, converter_kwargs, export, export_command, network, onnx_row
from shared.networks.three_dce import ps_roi_align_by_roi_align
from shared.phantoms import ct

BOX_PX, SCORE, LOGIT = 0.5, 1e-3, 1e-3


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    """An abdominal CT phantom in HU, (x, y, z) = 64 x 64 x 16 voxels of 6 x 6 x 5 mm (liver, kidneys, spine...)."""
    return ct.make_abdomen(np.random.default_rng(0), (64, 64, 16), (6.0, 6.0, 5.0)).hu


def _window(hu: np.ndarray, low: float, high: float) -> torch.Tensor:
    """HU windowed to [0, 1], as the bundles' preprocessing does."""
    return torch.from_numpy(np.clip((hu - low) / (high - low), 0.0, 1.0).astype(np.float32))


def _slices(hu: np.ndarray, window: tuple[float, float], count: int) -> torch.Tensor:
    """COUNT consecutive axial slices around the middle of the phantom, windowed: (1, COUNT, H, W), the bag of 3-slice
    images (z order) that the 2.5D detectors take, the target slice in the middle."""
    z = hu.shape[2] // 2
    return _window(hu[:, :, z - count // 2 : z + count // 2 + 1], *window).permute(2, 0, 1)[None]


def _export_and_session(bundle, net, tmp_path: Path, input_shape, overrides, config_files=None):
    """Save NET's weights as model.pt, export them with the documented command, return an ONNX Runtime session."""
    torch.save(net.state_dict(), tmp_path / "model.pt")
    export(bundle, tmp_path / "model.onnx", tmp_path / "model.pt", input_shape, overrides, config_files)
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == OPSET
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(tmp_path / "model.onnx"), options, providers=["CPUExecutionProvider"])


def _assert_same_detections(found: dict[str, np.ndarray], expected: dict[str, torch.Tensor]) -> int:
    """Same number of detections (> 0), boxes within 0.5 px, scores within 1e-3, the same labels; their number."""
    count = len(expected["boxes"])
    assert count > 0, "the eager network found nothing: comparing empty outputs proves nothing"
    assert len(found["boxes"]) == count
    np.testing.assert_allclose(found["boxes"], expected["boxes"].numpy(), rtol=0, atol=BOX_PX)
    np.testing.assert_allclose(found["scores"], expected["scores"].numpy(), rtol=0, atol=SCORE)
    np.testing.assert_array_equal(found["labels"], expected["labels"].numpy())
    return count


def _padded_rows(pred: np.ndarray) -> dict[str, np.ndarray]:
    """The detections in a padded (1, 1, K, 6) output: rows (x1, y1, x2, y2, score, label) up to the first label 0."""
    rows = pred[0, 0]
    count = int((rows[:, 5] > 0).sum())
    assert not rows[count:].any(), "padding rows must be zero"
    return {"boxes": rows[:count, :4], "scores": rows[:count, 4], "labels": rows[:count, 5].astype(np.int64)}


MSAN_TINY = {"network_def#channels": [4, 8, 16, 32]}


def test_msan_logits_match_eager_at_other_batch_and_patch_sizes(phantom, tmp_path):
    """MSAN exported at (1, 1, 32, 32, 8) runs on two 64 x 48 x 16 phantom patches (batch and x, y, z dynamic)."""
    net = network("msan_kits", MSAN_TINY)
    sess = _export_and_session("msan_kits", net, tmp_path, [1, 1, 32, 32, 8], MSAN_TINY)
    volume = _window(phantom, -200, 500)
    x = torch.stack([volume[:, :48], volume[:, 16:]])[:, None]  # (2, 1, 64, 48, 16)
    with torch.no_grad():
        expected = net(x).numpy()
    (found,) = sess.run(None, {"image": x.numpy()})
    assert found.shape == expected.shape == (2, 3, 64, 48, 16)
    assert expected.std() > 1e-3  # logits that vary, not a constant map
    np.testing.assert_allclose(found, expected, rtol=0, atol=LOGIT)


CSATT_TINY = {"backbone": "tiny", "num_images": 3}


def test_csatt_detections_match_eager(phantom, tmp_path):
    """3DCE + CS-Att (its position-sensitive RoI align exported as RoiAlign) exported at 64 x 64 runs on a 64 x 64
    phantom sample (M = 3 images = 9 slices) and on a 64 x 48 crop (height and width dynamic)."""
    net = network("cs_att_deeplesion", CSATT_TINY)
    sess = _export_and_session("cs_att_deeplesion", net, tmp_path, [1, 9, 64, 64], CSATT_TINY)
    sample = _slices(phantom, (-1024, 3071), 9)
    for x in (sample, sample[..., :48]):
        with torch.no_grad():
            (expected,) = net(list(x))
            padded = net(x).numpy()
        (pred,) = sess.run(None, {"image": x.numpy()})
        assert pred.shape == padded.shape == (1, 1, 100, 6)
        _assert_same_detections(_padded_rows(pred), expected)


VA_TINY = {
    "image_size": 64,
    "bag_size": 3,
    "backbone": "resnet18",
    "fpn_channels": 32,
    "frozen_batchnorm": False,
    "proposals_test": 100,
    "detections_per_image": 20,
}


@pytest.mark.slow
def test_va_mask_rcnn_detections_and_label_map_match_eager(phantom, tmp_path):
    """VA Mask R-CNN on one bag of 3 images (9 slices): the graph's label map and the detections it was painted
    from match the eager network's. The classifier's bias is raised for liver and lesion so that detections score
    above the label map's 0.5 and the map is not empty."""
    net = network("va_maskrcnn_lits", VA_TINY)
    with torch.no_grad():
        net.roi_heads.box_predictor.cls_score.bias[1:] += torch.tensor([4.0, 2.0])
    sess = _export_and_session("va_maskrcnn_lits", net, tmp_path, [1, 9, 64, 64], VA_TINY)
    bag = _slices(phantom, (-200, 300), 9)
    with torch.no_grad():
        (expected,) = net(list(bag))
        label_map = net(bag).numpy()
    pred, boxes, labels, scores, masks = sess.run(None, {"image": bag.numpy()})
    _assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels}, expected)
    np.testing.assert_allclose(masks, expected["masks"].numpy(), rtol=0, atol=1e-3)
    assert pred.shape == label_map.shape == (1, 1, 64, 64) and (label_map > 0).any()
    assert (pred == label_map).mean() > 0.999  # a mask value within 1e-3 of the 0.5 cut may flip a pixel


@pytest.mark.slow
def test_va_faster_rcnn_overlay_detections_match_eager(phantom, tmp_path):
    """cs_att_deeplesion's VA Faster R-CNN overlay exports too; its graph gives the padded detections of 3DCE."""
    overrides, files = {"backbone": "resnet18", "max_size": 64}, ("inference.json", "va_faster_rcnn.json")
    net = network("cs_att_deeplesion", overrides, files)
    sess = _export_and_session("cs_att_deeplesion", net, tmp_path, [1, 9, 64, 64], overrides, files)
    sample = _slices(phantom, (-1024, 3071), 9)
    with torch.no_grad():
        (expected,) = net(list(sample))
    (pred,) = sess.run(None, {"image": sample.numpy()})
    _assert_same_detections(_padded_rows(pred), expected)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_ps_roi_align_by_roi_align_equals_torchvision(sampling_ratio):
    """The exported form of 3DCE's position-sensitive pooling gives torchvision's ps_roi_align (two images, RoIs
    partly outside the map)."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 3 * 49, 20, 24, generator=gen)
    corner = torch.rand(40, 2, generator=gen) * 170 - 10
    size = 4 + 60 * torch.rand(40, 2, generator=gen)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=gen).float(), corner, corner + size], dim=1)
    expected = ps_roi_align(features, rois, 7, 1 / 8, sampling_ratio)
    found = ps_roi_align_by_roi_align(features, rois, 7, 1 / 8, sampling_ratio)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(found, expected, rtol=0, atol=1e-4)


def test_benchmark_row_is_the_median_ratio_of_every_pair_with_no_goal():
    """benchmarks/onnx_benchmark.py's row: ONNX Runtime time over eager time, each repeat over each, report only."""
    r = onnx_row("va_maskrcnn_lits", [0.1, 0.3], [0.2, 0.4], [1, 9, 128, 128], 2e-6, 1)
    assert r["what"] == "va_maskrcnn_lits: ONNX Runtime / PyTorch eager CPU inference time"
    assert r["ratio"] == pytest.approx(np.median([0.1 / 0.2, 0.1 / 0.4, 0.3 / 0.2, 0.3 / 0.4]))
    assert r["spread"] == pytest.approx([0.25, 1.5])
    assert "no goal" in r["goal"] and r["limit"]
    assert "eager 300.0 ms, ONNX Runtime 200.0 ms" in r["note"] and "[1, 9, 128, 128]" in r["note"]


def test_export_command_is_the_documented_one(repo_root):
    """The argv the tests and the benchmark run is docs/onnx.md's command: relative config paths (run from the
    bundle's folder), the trace exporter, and converter kwargs fire reads as a Python dict."""
    cmd = export_command("cs_att_deeplesion", "models/model.onnx", "models/model.pt", [1, 15, 512, 512])
    args = dict(zip(cmd[5::2], cmd[6::2]))
    assert cmd[2:5] == ["monai.bundle", "onnx_export", "network_def"]
    assert args["--config_file"] == "configs/inference.json" and args["--use_trace"] == "True"
    kwargs = ast.literal_eval(args["--converter_kwargs"])
    assert kwargs["dynamo"] is False and kwargs["opset_version"] == OPSET and kwargs["output_names"] == ["pred"]
    overlay = export_command(
        "cs_att_deeplesion",
        "m.onnx",
        "m.pt",
        [1, 9, 512, 512],
        {"backbone": "resnet18"},
        ("inference.json", "va_faster_rcnn.json"),
    )
    assert ast.literal_eval(overlay[overlay.index("--config_file") + 1]) == [
        "configs/inference.json",
        "configs/va_faster_rcnn.json",
    ]
    assert overlay[-2:] == ["--backbone", '"resnet18"']
    docs = (repo_root / "docs" / "onnx.md").read_text()
    assert "--use_trace True" in docs
    for bundle in ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion"):
        assert f'--converter_kwargs "{converter_kwargs(bundle)!r}"' in docs
