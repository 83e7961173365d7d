"""The evaluation's CS-Att attention pictures (issue 12): per-image contextual weights and the key-slice spatial map of
a lesion and a look-alike, in attention.json and attention_<object>.png; none for 3DCE or with num_pictures 0."""

import json
import math

import numpy as np
import pytest
import torch

from shared.data.deeplesion import make_datalist
from shared.engines.reports.deeplesion import evaluate_detector
from shared.networks.three_dce import ThreeDCE
from shared.phantoms.deeplesion import LOOKALIKES_NAME, make_phantoms
from shared.transforms.deeplesion import LoadDeepLesionSampled

M = 3  # images of 3 slices


@pytest.fixture(scope="module")
def context_root(tmp_path_factory):
    """Three context phantom series (one per split), each key slice with lesions and look-alikes."""
    return make_phantoms(tmp_path_factory.mktemp("context"), num_cases=3, seed=0, image_size=64, context=True)


def _loader():
    return LoadDeepLesionSampled(num_images=M, max_size=64, spacing_mm=4.0)


def _cs_att() -> ThreeDCE:
    """A tiny CS-Att network whose contextual attention differs between the images (a fresh one is near uniform)."""
    torch.manual_seed(0)
    model = ThreeDCE(M, "tiny").eval()
    torch.nn.init.normal_(model.backbone.attention.phi_c.weight, std=10.0)
    return model


def _box_mean(maps: torch.Tensor, box) -> torch.Tensor:
    """Mean over the channels and the stride 8 cells that box (x1, y1, x2, y2) overlaps of maps (M, D, h, w)."""
    rows = slice(int(box[1] // 8), math.ceil(box[3] / 8))
    cols = slice(int(box[0] // 8), math.ceil(box[2] / 8))
    return maps[:, :, rows, cols].mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def evaluated(context_root, tmp_path_factory):
    model, out = _cs_att(), tmp_path_factory.mktemp("eval")
    evaluate_detector(model, context_root, out, _loader(), split="test", num_pictures=1)
    return model, out, json.loads((out / "attention.json").read_text())


def test_lesion_weights_are_the_contextual_maps_in_its_box(context_root, evaluated):
    model, out, report = evaluated
    entry = make_datalist(context_root)["test"][0]
    sample = _loader()(entry)
    lesion = report["lesion"]
    assert lesion["file"] == entry["file_name"]
    assert lesion["box"] == pytest.approx(sample["boxes"][0].tolist())
    maps = model.attention_maps([sample["image"]])
    expected = _box_mean(maps["contextual"][0], lesion["box"])
    assert len(lesion["contextual_per_image"]) == M
    assert lesion["contextual_per_image"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert max(expected) - min(expected) > 1e-3  # the images differ, so their order is checked too
    spatial = maps["spatial"][0, M // 2 : M // 2 + 1]  # the key image's S''
    assert lesion["spatial_mean_in_box"] == pytest.approx(_box_mean(spatial, lesion["box"]).item(), rel=1e-5)
    assert 0 < lesion["spatial_mean_outside_box"] <= 1
    assert (out / "attention_lesion.png").is_file()


def test_lookalike_box_is_one_of_the_phantoms_mapped_into_the_sample(context_root, evaluated):
    model, out, report = evaluated
    lookalike = report["lookalike"]
    entry = next(e for e in make_datalist(context_root)["test"] if e["file_name"] == lookalike["file"])
    sample = _loader()(entry)
    x0, y0 = sample["origin"]
    one_based = np.asarray(json.loads((context_root / LOOKALIKES_NAME).read_text())[lookalike["file"]])
    mapped = (one_based - 1.0 - [x0, y0, x0, y0]) * sample["scale"]
    assert sample["origin"] != (0, 0)  # the black-border crop moved the frame
    assert np.abs(np.clip(mapped, 0, 64) - lookalike["box"]).max(axis=1).min() < 1e-3
    expected = _box_mean(model.attention_maps([sample["image"]])["contextual"][0], lookalike["box"])
    assert lookalike["contextual_per_image"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert (out / "attention_lookalike.png").is_file()


def test_no_attention_pictures_for_3dce_or_without_pictures(context_root, tmp_path):
    plain = ThreeDCE(M, "tiny", contextual=False, spatial=False).eval()
    evaluate_detector(plain, context_root, tmp_path / "3dce", _loader(), split="test", num_pictures=1)
    assert list((tmp_path / "3dce").glob("detections_*.png"))
    assert not list((tmp_path / "3dce").glob("attention*"))
    evaluate_detector(_cs_att(), context_root, tmp_path / "none", _loader(), split="test", num_pictures=0)
    assert (tmp_path / "none" / "froc.png").is_file() and not list((tmp_path / "none").glob("attention*"))


def test_a_spatial_only_network_has_no_contextual_weights(context_root, tmp_path):
    spatial_only = ThreeDCE(M, "tiny", contextual=False).eval()
    evaluate_detector(spatial_only, context_root, tmp_path, _loader(), split="test", num_pictures=1)
    report = json.loads((tmp_path / "attention.json").read_text())
    assert set(report) == {"lesion", "lookalike"}
    assert report["lesion"]["contextual_per_image"] is None and report["lesion"]["spatial_mean_in_box"] > 0
    assert (tmp_path / "attention_lesion.png").is_file()
