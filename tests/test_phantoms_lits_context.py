"""Context LiTS phantoms: a look-alike is its lesion on the slices the target 2.5D image reads, a tube beyond."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from shared.data import lits
from shared.phantoms import ct
from shared.phantoms import lits as phantoms
from shared.phantoms.context import LOOKALIKES_NAME
from shared.transforms.slice_bags import bag_slice_indices, image_slice_indices

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "va_maskrcnn_lits" / "configs"
SHAPE = (48, 48, 48)  # (rows, cols, slices at 1.5 mm)
# make_phantoms(num_cases=2, seed=3, shape=(24, 24, 16), num_test=1) before the context option existed
DEFAULT_DIGEST = "bc81d32b35063b718405c86ed3aa6307379f4ce8742980547d52a8191590917c"
# make_phantoms(num_cases=2, seed=3, shape=(24, 24, 16), num_test=1, context=True) before --context_bag existed
# (computed with the code of 1caf574), and deeplesion's make_phantoms(num_cases=3, seed=3, image_size=48, context=True)
# (its PNGs by pixels, computed with the code of 0b351c6, before the PNGs were written at zlib level 1)
CONTEXT_DIGESTS = {
    "lits": "9df736245f189d911583f3cd6f265fe686996a43fda543868db644302ed54b2b",
    "deeplesion": "66ee66b106d6946642d2f9d682b7a5be6a8929bd7bc5ad0765418285160014c4",
}


def digest(root: Path) -> str:
    """SHA-256 over every file's name and content: a PNG's decoded pixels (dtype, shape, values; not its zlib stream,
    which the encoder's compression level changes), any other file's bytes."""
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(root)).encode())
        if path.suffix == ".png":
            with Image.open(path) as image:
                pixels = np.asarray(image)
            sha.update(f"{pixels.dtype.str}{pixels.shape}".encode())
            sha.update(pixels.tobytes())
        else:
            sha.update(path.read_bytes())
    return sha.hexdigest()


def draw(seed: int, thickness: float, fov: str = "body"):
    """A context case's anatomy, grid, objects and look-alikes, and the same objects all drawn as lesions."""
    anatomy, grid, objects, lookalikes = phantoms._draw_case(np.random.default_rng(seed), SHAPE, thickness, True, fov)
    as_lesions = [dataclasses.replace(o, shape=o.shape.blob) if i in lookalikes else o for i, o in enumerate(objects)]
    return anatomy, grid, objects, lookalikes, as_lesions


def preprocess(paths: dict[str, Path]) -> dict:
    """The bundle's training preprocessing (RAS, HU window, 1.5 mm slices, 32 px) of one written volume."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["image_size"] = 32
    return parser.get_parsed_content("preprocessing")({key: str(path) for key, path in paths.items()})


@pytest.mark.parametrize("fov", ["body", "liver"])
@pytest.mark.parametrize("thickness", [0.7, 1.25, 5.0])
def test_target_image_reads_the_same_volume_the_bag_tells_them_apart(tmp_path, thickness, fov):
    """Render a volume's objects twice with the same draws: look-alikes as tubes, then as the lesions they were
    drawn as. After the bundle's preprocessing the 2.5D image centred on the objects' level is the same in both,
    while its label differs (liver vs lesion) and the other images of a bag of 9 differ; with either field of view
    (the liver's finer pixels change the blur's reach across slices)."""
    anatomy, grid, objects, lookalikes, as_lesions = draw(7, thickness, fov)
    assert lookalikes and len(lookalikes) < len(objects)
    versions = {}
    for name, shown in (("tubes", objects), ("lesions", as_lesions)):
        case = ct.make_abdomen(np.random.default_rng(1), *grid, shown, anatomy)
        files = {"image": tmp_path / f"{name}.nii", "label": tmp_path / f"{name}-seg.nii"}
        phantoms._write_case(case, lookalikes if name == "tubes" else set(), files["image"], files["label"])
        versions[name] = preprocess(files)
    image, label = versions["tubes"]["image"], versions["tubes"]["label"]
    level = objects[0].shape.center[2]
    target = round(float((level - image.affine[2, 3]) / image.affine[2, 2]))
    depth = image.shape[-1]
    seen = image_slice_indices(target, depth)
    assert np.array_equal(image[..., seen], versions["lesions"]["image"][..., seen])
    assert not np.array_equal(label[..., target], versions["lesions"]["label"][..., target])
    bag = bag_slice_indices(target, depth, ConfigParser.load_config_file(CONFIGS / "train.json")["bag_size"])
    others = np.setdiff1d(bag, seen)
    assert not np.array_equal(image[..., others], versions["lesions"]["image"][..., others])


@pytest.mark.parametrize("thickness", [0.7, 2.0, 5.0])
def test_hu_equal_on_the_slices_read_and_masks_within_the_band_differing_beyond(thickness):
    anatomy, grid, objects, lookalikes, as_lesions = draw(3, thickness)
    tubes = ct.make_abdomen(np.random.default_rng(1), *grid, objects, anatomy)
    blobs = ct.make_abdomen(np.random.default_rng(1), *grid, as_lesions, anatomy)
    band = phantoms.context_band_mm(grid[1])
    read = band - ct.blur_reach(grid[1])[2] * thickness  # the farthest slice the target image reads
    assert read == pytest.approx(thickness * np.ceil(1.5 / thickness - 1e-9))
    dz = np.abs(ct.ras_grid(*grid)[2].ravel() - objects[0].shape.center[2])
    assert np.array_equal(tubes.hu[..., dz <= read + 1e-4], blobs.hu[..., dz <= read + 1e-4])
    assert np.array_equal(tubes.lesions[..., dz <= band + 1e-4], blobs.lesions[..., dz <= band + 1e-4])
    assert not np.array_equal(tubes.hu[..., dz > band + 1e-4], blobs.hu[..., dz > band + 1e-4])
    for i in lookalikes:
        assert not (blobs.lesions[..., dz > band * 1.6] == i + 1).any()  # the lesion ends
        assert (tubes.lesions[..., dz > band * 1.6] == i + 1).any()  # its look-alike runs on


def test_objects_share_a_kept_level_and_never_are_all_lookalikes():
    counts = []
    for seed in range(12):
        thickness = phantoms.THICKNESSES_MM[seed % len(phantoms.THICKNESSES_MM)]
        anatomy, grid, objects, lookalikes = phantoms._draw_case(np.random.default_rng(seed), SHAPE, thickness, True)
        z = ct.ras_grid(*grid)[2].ravel()
        levels = {o.shape.center[2] for o in objects}
        assert len(levels) == 1
        offset = (levels.pop() - z[0]) / np.array([thickness, lits.RESAMPLED_THICKNESS_MM])
        assert np.allclose(offset, np.rint(offset), atol=1e-4)  # a volume slice that resampling keeps
        assert (1 <= len(lookalikes) < len(objects)) if len(objects) > 1 else not lookalikes
        counts.append(len(objects))
    assert max(counts) >= 3


def test_labels_and_centres_of_written_lookalikes(tmp_path):
    anatomy, grid, objects, lookalikes, _ = draw(5, 2.5)
    case = ct.make_abdomen(np.random.default_rng(1), *grid, objects, anatomy)
    centres = phantoms._write_case(case, lookalikes, tmp_path / "v.nii", tmp_path / "s.nii")
    label = np.asarray(nib.load(tmp_path / "s.nii").dataobj)
    ids = ct.reorient(case.lesions, case.affine, lits.AXCODES)[0]
    for i in range(len(objects)):
        assert (label[ids == i + 1] == (lits.LIVER if i in lookalikes else lits.LESION)).all()
    assert (label == lits.LESION).any() and np.isin(ids, [i + 1 for i in lookalikes]).any()
    assert sorted(int(ids[tuple(c)]) - 1 for c in centres) == sorted(lookalikes)
    affine = nib.load(tmp_path / "v.nii").affine
    for c in centres:
        world = nib.affines.apply_affine(affine, c)
        mm = min(np.linalg.norm(world - np.array(objects[i].shape.center)) for i in lookalikes)
        assert mm <= np.linalg.norm(grid[1])  # within a voxel diagonal of a look-alike's centre


def test_context_dataset_is_valid_and_lists_every_volume(tmp_path):
    root = phantoms.make_phantoms(tmp_path / "ctx", num_cases=3, seed=1, shape=(32, 32, 24), context=True)
    assert lits.validate(root) == []
    centres = json.loads((root / LOOKALIKES_NAME).read_text())
    assert set(centres) == {"volume-0.nii", "volume-1.nii", "volume-2.nii", "test-volume-0.nii"}
    assert sum(len(found) for found in centres.values()) >= 2
    for n in range(3):
        label = np.asarray(nib.load(root / f"segmentation-{n}.nii").dataobj)
        assert all(label[tuple(c)] == lits.LIVER for c in centres[f"volume-{n}.nii"])


def test_default_phantoms_unchanged(tmp_path):
    root = phantoms.make_phantoms(tmp_path / "d", num_cases=2, seed=3, shape=(24, 24, 16), num_test=1, context=False)
    assert digest(root) == DEFAULT_DIGEST  # a change of numpy, scipy or nibabel may move it: check that first
    assert not (root / LOOKALIKES_NAME).exists()


def test_cli_context_option(tmp_path):
    def run(value: str, out: str):
        cmd = [sys.executable, "-m", "shared", "phantoms", "lits", str(tmp_path / out), "--num_cases", "1"]
        return subprocess.run(
            [*cmd, "--num_test", "0", "--shape", "[24,24,12]", "--context", value],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )

    assert run("true", "on").returncode == 0 and (tmp_path / "on" / LOOKALIKES_NAME).is_file()
    refused = run("maybe", "bad")
    assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0 and "--context true" in refused.stderr


@pytest.mark.parametrize(("thickness", "reach"), [(0.7, 19.6), (2.5, 20.0), (3.0, 21.0), (5.0, 20.0)])
def test_phantoms_made_for_a_bag_end_lesions_within_its_reach(thickness, reach):
    """--context_bag 9: every lesion ends beyond the band but within what a bag of 9 reads (a volume slice it reads
    lies beyond the end), the look-alike runs on to that slice, and the target image still reads the same HU for
    both versions; --max_lookalikes 1 leaves one look-alike."""
    rng = np.random.default_rng(4)
    anatomy, grid, objects, lookalikes = phantoms._draw_case(
        rng, SHAPE, thickness, True, context_bag=9, max_lookalikes=1
    )
    band = phantoms.context_band_mm(grid[1])
    # the bag of 9 reads 13 resampled slices (19.5 mm) out, interpolated from the volume slice at or beyond that
    assert phantoms.bag_reach_mm(thickness, 9) == pytest.approx(reach)
    assert len(lookalikes) == 1 and len(objects) >= 2
    as_lesions = [dataclasses.replace(o, shape=o.shape.blob) if i in lookalikes else o for i, o in enumerate(objects)]
    tubes = ct.make_abdomen(np.random.default_rng(1), *grid, objects, anatomy)
    blobs = ct.make_abdomen(np.random.default_rng(1), *grid, as_lesions, anatomy)
    dz = np.abs(ct.ras_grid(*grid)[2].ravel() - objects[0].shape.center[2])
    read = band - ct.blur_reach(grid[1])[2] * thickness
    assert np.array_equal(tubes.hu[..., dz <= read + 1e-4], blobs.hu[..., dz <= read + 1e-4])
    last = np.abs(dz - reach) < 1e-4  # the farthest volume slice the bag reads
    for i, obj in enumerate(as_lesions):
        end = obj.shape.radii[2]
        assert band < end < reach
        assert not (blobs.lesions[..., last] == i + 1).any()  # every lesion has ended there
    (i,) = lookalikes
    x, y, z = objects[i].shape.center
    for side in (-1, 1):  # its look-alike runs on to the farthest slice read, either way (the liver may clip it)
        assert objects[i].shape.contains(np.array(x), np.array(y), np.array(z + side * reach))
        assert not as_lesions[i].shape.contains(np.array(x), np.array(y), np.array(z + side * reach))


def test_context_bag_options_are_refused_without_context_or_within_the_band(tmp_path):
    with pytest.raises(ValueError, match="give them with --context true"):
        phantoms.make_phantoms(tmp_path / "a", num_cases=1, context_bag=9)
    with pytest.raises(ValueError, match="--context_bag 8: a bag is an odd number of images"):
        phantoms.make_phantoms(tmp_path / "a", num_cases=1, context=True, context_bag=8)
    with pytest.raises(ValueError, match="--max_lookalikes -1: give 0 or more"):
        phantoms.make_phantoms(tmp_path / "a", num_cases=1, context=True, max_lookalikes=-1)
    with pytest.raises(ValueError, match="a bag of 1 reads 5 mm from the target at 5 mm slices, not beyond"):
        phantoms._context_objects(np.random.default_rng(0), *_anatomy_grid(5.0), context_bag=1)


def _anatomy_grid(thickness: float):
    anatomy, grid, _, _ = phantoms._draw_case(np.random.default_rng(2), SHAPE, thickness, False)
    return (anatomy, *grid)


def test_default_context_phantoms_unchanged(tmp_path):
    """The options made for a bag leave the default context phantoms of both datasets (which share the look-alikes'
    code) as they were."""
    from shared.phantoms import deeplesion

    root = phantoms.make_phantoms(tmp_path / "l", num_cases=2, seed=3, shape=(24, 24, 16), num_test=1, context=True)
    assert digest(root) == CONTEXT_DIGESTS["lits"]  # a change of numpy, scipy or nibabel may move it: check that first
    root = deeplesion.make_phantoms(tmp_path / "d", num_cases=3, seed=3, image_size=48, context=True)
    assert digest(root) == CONTEXT_DIGESTS["deeplesion"]
