"""Context DeepLesion phantoms: a look-alike is its lesion on the slices the key 3-slice image reads, a tube beyond."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.data import deeplesion
from shared.phantoms import context, ct
from shared.phantoms import deeplesion as phantoms
from shared.transforms.deeplesion import context_positions

REPO = Path(__file__).resolve().parents[1]


def reach_mm(num_slices: int, interval: float) -> float:
    """How far from the key slice (mm) the loader reads series slices for ``num_slices`` slices 2 mm apart (it
    interpolates between the slices around each position)."""
    positions = context_positions(50, num_slices, interval, phantoms.KEY_IMAGE_MM)
    return float(np.abs(np.concatenate([np.floor(positions), np.ceil(positions)]) - 50).max() * interval)


@pytest.mark.parametrize("interval", [1.0, 1.25, 2.0, 2.5, 3.0, 5.0])
def test_band_holds_the_slices_the_key_image_reads_and_one_more(interval):
    assert phantoms.key_band_mm(interval) == pytest.approx(reach_mm(3, interval) + interval)


def test_tube_is_its_blob_within_the_band_and_runs_on_beyond():
    blob = ct.Ellipsoid((0.0, 0.0, 0.0), (10.0, 8.0, 6.0), 0.3)
    tube = context.Tube(blob, band=4.0, half_length=30.0)
    x, y = np.meshgrid(np.linspace(-12, 12, 49), np.linspace(-12, 12, 49), indexing="ij")
    for dz in (-4.0, -2.5, 0.0, 1.0, 4.0):
        assert np.array_equal(tube.contains(x, y, dz), blob.contains(x, y, dz))
    at_band = blob.contains(x, y, 4.0)
    for dz in (7.0, -20.0, 30.0):  # the blob has ended (its z radius is 6 mm), the tube keeps its band section
        assert not blob.contains(x, y, dz).any()
        assert np.array_equal(tube.contains(x, y, dz), at_band)
    assert not tube.contains(x, y, 31.0).any()
    assert tube.center == blob.center and tube.radii == blob.radii


@pytest.mark.parametrize("interval", [1.0, 2.5, 5.0])
def test_rendered_lookalike_is_its_lesion_on_the_key_slices_and_differs_within_m5_reach(interval):
    """Render a key slice's objects twice with the same draws: look-alikes as tubes, then as the lesions they were
    drawn as. Their voxels agree on every slice within the band (key slice +- 1 and one more) and differ beyond."""
    rng = np.random.default_rng(11)
    anatomy = ct.sample_anatomy(rng)
    z_key, num_slices = 30.0, 41
    objects, lookalikes = phantoms.context_objects(rng, anatomy, z_key, interval)
    assert lookalikes and len(lookalikes) < len(objects)
    as_lesions = [
        ct.Lesion(o.site, o.shape.blob, o.hu, o.core_hu) if i in lookalikes else o for i, o in enumerate(objects)
    ]
    grid = ((64, 64, num_slices), (4.5, 4.5, interval), z_key)
    tubes = ct.make_abdomen(np.random.default_rng(1), *grid, objects, anatomy)
    blobs = ct.make_abdomen(np.random.default_rng(1), *grid, as_lesions, anatomy)
    assert np.array_equal(tubes.organs, blobs.organs)
    dz = (np.arange(num_slices) - (num_slices - 1) // 2) * interval
    band = np.abs(dz) <= phantoms.key_band_mm(interval) + 1e-6
    for i, obj in enumerate(objects):
        tube, blob = tubes.lesions == i + 1, blobs.lesions == i + 1
        assert np.array_equal(tube[..., band], blob[..., band])
        assert tube[..., band].any()
        if i in lookalikes:
            beyond = (~band) & (np.abs(dz) <= reach_mm(15, interval) + 1e-6)  # what M = 5 images read
            assert (tube[..., beyond].sum(axis=(0, 1)) > blob[..., beyond].sum(axis=(0, 1))).any()
            assert not blob[..., np.abs(dz) > obj.shape.blob.radii[2]].any()  # the lesion ends a few slices away
            assert tube[..., np.abs(dz) > obj.shape.blob.radii[2]].any()  # its look-alike goes on
        else:
            assert np.array_equal(tube, blob)


def test_lesions_and_lookalikes_are_drawn_alike():
    """Site, diameter and HU of look-alikes follow the lesions' distribution (roles are drawn after the objects)."""
    lesions, lookalikes = [], []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        objects, chosen = phantoms.context_objects(rng, ct.sample_anatomy(rng), 20.0, 2.5)
        for i, obj in enumerate(objects):
            shape = obj.shape.blob if i in chosen else obj.shape
            (lookalikes if i in chosen else lesions).append((obj.site, 2 * shape.radii[0], obj.hu, shape.radii[2]))
    assert len(lesions) > 300 and len(lookalikes) > 300
    for column in (1, 2, 3):
        a, b = np.array([o[column] for o in lesions]), np.array([o[column] for o in lookalikes])
        standard_error = np.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 3 * standard_error
    for site in ("liver", "abdomen", "kidney"):
        share = [np.mean([o[0] == site for o in group]) for group in (lesions, lookalikes)]
        assert abs(share[0] - share[1]) < 0.06


def test_context_dataset_keeps_lookalikes_out_of_dl_info(tmp_path):
    root = phantoms.make_phantoms(tmp_path / "context", num_cases=6, seed=2, image_size=64, context=True)
    assert deeplesion.validate(root) == []
    rows = deeplesion.read_annotations(root)
    key_files = {r["File_name"] for r in rows}
    assert len({r["File_name"].rsplit("_", 1)[0] for r in rows}) == len(key_files)  # one key slice per series
    boxes = json.loads((root / phantoms.LOOKALIKES_NAME).read_text())
    assert boxes and set(boxes) <= key_files
    annotated = {(r["File_name"], tuple(r["Bounding_boxes"])) for r in rows}
    assert all((name, tuple(box)) not in annotated for name, found in boxes.items() for box in found)
    plain = phantoms.make_phantoms(tmp_path / "plain", num_cases=3, seed=2, image_size=64)
    assert not (plain / phantoms.LOOKALIKES_NAME).exists()


def test_cli_context_option(tmp_path):
    def run(value: str, out: str):
        cmd = [sys.executable, "-m", "shared", "phantoms", "deeplesion", str(tmp_path / out), "--num_cases", "3"]
        return subprocess.run(
            [*cmd, "--image_size", "48", "--context", value], cwd=REPO, capture_output=True, text=True, check=False
        )

    assert run("True", "on").returncode == 0 and (tmp_path / "on" / phantoms.LOOKALIKES_NAME).is_file()
    assert run("false", "off").returncode == 0 and not (tmp_path / "off" / phantoms.LOOKALIKES_NAME).exists()
    refused = run("maybe", "bad")
    assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0 and "--context true" in refused.stderr
