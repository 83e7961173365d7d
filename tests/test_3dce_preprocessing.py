"""3DCE preprocessing of DeepLesion PNG series: HU window, 2 mm interpolation, missing slices, spacing, black-border
clipping, cache."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from shared.engines.inferers.deeplesion import detect_entries
from shared.transforms.deeplesion import (
    LoadDeepLesionSampled,
    body_box,
    context_positions,
    prepare_entries,
    rescale_factor,
)


def _series(tmp_path, indices, shape=(20, 30), name="000001_01_01"):
    """Series whose slice i is constant HU 10 * i (stored as 32768 + HU)."""
    folder = tmp_path / "Images_png" / name
    folder.mkdir(parents=True)
    for i in indices:
        Image.fromarray(np.full(shape, 32768 + 10 * i, dtype=np.uint16)).save(folder / f"{i:03d}.png")
    return folder


def _entry(folder, key, interval, pixel=0.8, boxes=((2.0, 3.0, 10.0, 12.0),)):
    boxes = [list(b) for b in boxes]
    return {"image": str(folder), "key_slice": key, "spacing": [pixel, pixel, interval], "boxes": boxes}


def _hu(image_values):
    return image_values * 4095.0 - 1024.0  # inverse of the [-1024, 3071] -> [0, 1] window


def test_context_positions_at_2mm():
    assert np.allclose(context_positions(10, 3, 0.8), [7.5, 10, 12.5])
    assert np.allclose(context_positions(10, 9, 1.0), [2, 4, 6, 8, 10, 12, 14, 16, 18])
    assert np.allclose(context_positions(10, 3, float("nan")), [10, 10, 10])


def test_linear_interpolation_to_2mm_and_window(tmp_path):
    folder = _series(tmp_path, range(1, 21))
    out = LoadDeepLesionSampled(num_images=1)(_entry(folder, 10, 0.8))
    values = _hu(out["image"].numpy().mean(axis=(1, 2)))
    # slices at 10 -+ 2.5: halfway between slices 7/8 and 12/13 -> 75 and 125 HU
    assert np.allclose(values, [75.0, 100.0, 125.0], atol=1e-3)
    assert out["image"].shape == (3, 20, 30)  # 0.8 mm pixels: no rescaling


def test_key_slice_in_middle_channel_of_middle_image(tmp_path):
    folder = _series(tmp_path, range(1, 41))
    out = LoadDeepLesionSampled(num_images=3)(_entry(folder, 20, 2.0))
    values = _hu(out["image"].numpy().mean(axis=(1, 2)))
    assert np.allclose(values, 10.0 * np.arange(16, 25), atol=1e-3)
    assert np.isclose(values[4], 200.0, atol=1e-3)  # channel 4 = image 1, channel 1


def test_missing_file_uses_nearest_slice_towards_key_and_ends_replicate(tmp_path):
    folder = _series(tmp_path, [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15])  # slice 8 missing
    out = LoadDeepLesionSampled(num_images=1)(_entry(folder, 10, 0.8))
    values = _hu(out["image"].numpy().mean(axis=(1, 2)))
    assert np.allclose(values[0], 0.5 * 70 + 0.5 * 90, atol=1e-3)  # 7.5 between 7 and (8 -> 9)
    out = LoadDeepLesionSampled(num_images=1)(_entry(folder, 2, 1.0))
    values = _hu(out["image"].numpy().mean(axis=(1, 2)))
    assert np.allclose(values, [10.0, 20.0, 40.0], atol=1e-3)  # slice 0 does not exist: replicate slice 1


def test_hu_window_clips(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    hu = np.array([[-2000, -1024, 1023.5 - 0.5, 3071, 5000]], dtype=np.float64)
    Image.fromarray((hu + 32768).astype(np.uint16)).save(folder / "001.png")
    out = LoadDeepLesionSampled(num_images=1)(_entry(folder, 1, float("nan"), boxes=()))
    assert np.allclose(out["image"][1, 0].numpy(), [0.0, 0.0, 2047 / 4095, 1.0, 1.0], atol=1e-6)


def test_rescale_to_08mm_and_cap_at_max_size(tmp_path):
    assert rescale_factor((512, 512), 0.4, 0.8, 512) == 0.5
    assert rescale_factor((512, 512), 1.0, 0.8, 512) == 1.0  # 640 px would exceed 512: capped
    assert rescale_factor((768, 1024), 0.6, 0.8, 512) == 0.5
    folder = _series(tmp_path, range(1, 6))
    out = LoadDeepLesionSampled(num_images=1)(_entry(folder, 3, 2.0, pixel=0.4))
    assert out["image"].shape == (3, 10, 15) and out["scale"] == 0.5
    assert np.allclose(out["boxes"].numpy(), [[1.0, 1.5, 5.0, 6.0]])
    assert out["labels"].tolist() == [1]
    capped = LoadDeepLesionSampled(num_images=1, max_size=12)(_entry(folder, 3, 2.0))
    assert capped["image"].shape == (3, 8, 12) and np.isclose(capped["scale"], 0.4)


def test_boxes_outside_image_are_clipped_or_dropped(tmp_path):
    folder = _series(tmp_path, range(1, 4))
    entry = _entry(folder, 2, 2.0, boxes=((25.0, 15.0, 40.0, 30.0), (35.0, 1.0, 45.0, 5.0)))
    with pytest.warns(UserWarning, match="dropped"):
        out = LoadDeepLesionSampled(num_images=1)(entry)
    assert np.allclose(out["boxes"].numpy(), [[25.0, 15.0, 30.0, 20.0]])


def test_cache_is_reused_and_keyed_by_parameters(tmp_path):
    folder = _series(tmp_path, range(1, 21))
    cache = tmp_path / "cache"
    loader = LoadDeepLesionSampled(num_images=1, cache_dir=cache)
    first = loader(_entry(folder, 10, 0.8))
    assert len(list(cache.glob("*.npz"))) == 1
    for png in folder.glob("*.png"):  # the second load must not need the PNGs
        png.unlink()
    second = loader(_entry(folder, 10, 0.8))
    assert np.allclose(first["image"].numpy(), second["image"].numpy(), atol=1e-3)
    assert second["image"].dtype == first["image"].dtype
    LoadDeepLesionSampled(num_images=1, cache_dir=cache, max_size=8).sample(
        {"image": str(_series(tmp_path, [1], name="other")), "key_slice": 1, "spacing": [1, 1, 1]}
    )
    assert len(list(cache.glob("*.npz"))) == 2


def test_prepare_entries_skips_bad_rows_with_a_warning(tmp_path):
    folder = _series(tmp_path, range(1, 6))
    good = _entry(folder, 3, 2.0)
    missing = dict(_entry(folder, 9, 2.0), file_name="000001_01_01_009.png")
    loader = LoadDeepLesionSampled(num_images=1, cache_dir=tmp_path / "cache")
    with pytest.warns(UserWarning, match="000001_01_01_009.png"):
        kept = prepare_entries([good, missing], loader)
    assert kept == [good]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no DeepLesion entry"):
            prepare_entries([missing], loader)


def _framed_body(shape=(20, 30)) -> np.ndarray:
    """HU slice: air (-1000) around a body of 40 HU in rows 5-14, columns 8-21, and a 2-pixel table line in row 17-18
    (0 HU, above 3DCE's -768 threshold but thinner than its 7 x 7 opening)."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[5:15, 8:22] = 40.0
    hu[17:19, :] = 0.0
    return hu


def _framed_series(tmp_path, indices=range(1, 4)):
    folder = tmp_path / "Images_png" / "000002_01_01"
    folder.mkdir(parents=True)
    for i in indices:
        Image.fromarray((_framed_body() + 32768).astype(np.uint16)).save(folder / f"{i:03d}.png")
    return folder


def test_body_box_is_the_body_without_the_table():
    assert body_box(_framed_body()) == (5, 15, 8, 22)
    assert body_box(np.full((6, 9), -1000.0)) == (0, 6, 0, 9)  # no body: the whole slice (3DCE)


def test_black_border_clipped_before_rescaling_boxes_shifted(tmp_path):
    folder = _framed_series(tmp_path)
    entry = _entry(folder, 2, 2.0, boxes=((10.0, 7.0, 14.0, 11.0),))
    loader = LoadDeepLesionSampled(num_images=1, cache_dir=tmp_path / "cache")
    out = loader(entry)
    assert out["image"].shape == (3, 10, 14) and out["origin"] == (8, 5)
    assert np.allclose(_hu(out["image"].numpy()), 40.0, atol=1e-3)  # only body pixels are left
    assert np.allclose(out["boxes"].numpy(), [[2.0, 2.0, 6.0, 6.0]])
    assert loader(entry)["origin"] == (8, 5)  # from the cache
    half = LoadDeepLesionSampled(num_images=1)(_entry(folder, 2, 2.0, pixel=0.4, boxes=((10.0, 7.0, 14.0, 11.0),)))
    assert half["image"].shape == (3, 5, 7) and np.allclose(half["boxes"].numpy(), [[1.0, 1.0, 3.0, 3.0]])
    whole = LoadDeepLesionSampled(num_images=1, clip_black_border=False)(entry)
    assert whole["image"].shape == (3, 20, 30) and whole["origin"] == (0, 0)
    assert np.allclose(whole["boxes"].numpy(), [[10.0, 7.0, 14.0, 11.0]])


class _BoxesOfTheLoader(torch.nn.Module):
    """A 'detector' that returns, in the preprocessed pixels, the boxes the loader made of the ground truth."""

    def __init__(self, loader, entry):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.boxes = loader(entry)["boxes"]

    def forward(self, images):
        return [{"boxes": self.boxes, "scores": torch.ones(len(self.boxes))} for _ in images]


@pytest.mark.parametrize("pixel", [0.8, 0.4])
def test_inference_maps_boxes_back_to_png_pixels(tmp_path, pixel):
    folder = _framed_series(tmp_path)
    truth = [[10.0, 7.0, 14.0, 11.0], [9.0, 6.0, 21.0, 14.0]]
    entry = _entry(folder, 2, 2.0, pixel=pixel, boxes=truth)
    loader = LoadDeepLesionSampled(num_images=1)
    detections = detect_entries(_BoxesOfTheLoader(loader, entry), [entry], loader)
    assert [d["box"] for d in detections] == truth
