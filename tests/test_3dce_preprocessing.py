"""3DCE preprocessing of DeepLesion PNG series: HU window, 2 mm interpolation, missing slices, spacing, cache."""

import warnings

import numpy as np
import pytest
from PIL import Image

from shared.transforms.deeplesion import (
    LoadDeepLesionSampled,
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
