"""LiTS phantoms: hypodense liver lesions of VA Table 2's size classes in the LiTS layout, varied slice thickness."""

import dataclasses
import json
import math
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from shared.data.atomic import atomic_path
from shared.data.lits import AXCODES, LESION, LIVER, RESAMPLED_THICKNESS_MM
from shared.phantoms import ct
from shared.phantoms.context import LOOKALIKES_NAME, band_mm, make_lookalikes

THICKNESSES_MM = (0.7, 5.0, 1.0, 2.5, 0.8, 3.0, 1.25, 2.0)  # spread over LiTS's 0.7-5 mm
DEMO_NUM_CASES = 8
DEMO_SHAPE = (96, 96, 96)
SIZE_CLASSES_MM = ((6, 15), (15, 30), (30, 60))  # VA Table 2: small, medium, large
FIELDS_OF_VIEW = ("body", "liver")  # what a slice spans: the body's width, or the liver's box


def _diameter(rng: np.random.Generator) -> float:
    """A lesion diameter (mm): small (<15 mm), medium (15-30 mm) or large (30-60 mm) as in VA Table 2."""
    return rng.uniform(*SIZE_CLASSES_MM[rng.integers(len(SIZE_CLASSES_MM))])


def _lesion_requests(rng: np.random.Generator) -> list[ct.LesionRequest]:
    """0-5 hypodense liver lesions of VA Table 2's size classes."""
    count = rng.choice(6, p=[0.1, 0.25, 0.25, 0.2, 0.1, 0.1])
    return [ct.LesionRequest("liver", _diameter(rng)) for _ in range(count)]


def context_band_mm(spacing) -> float:
    """Band (mm) around a context object's centre, for a volume of ``spacing`` (x, y, slice thickness) mm: the
    farthest slice that the target 2.5D image centred there reads (its slices are the resampled slice at the centre
    and one on either side, 1.5 mm away, each interpolated linearly between the two volume slices around it), plus
    the slices that the phantom's blur reaches across (:func:`shared.phantoms.ct.blur_reach`), so that HU differences
    beyond the band leave the slices it reads unchanged."""
    return band_mm(spacing[2], RESAMPLED_THICKNESS_MM, ct.blur_reach(spacing)[2])


def bag_reach_mm(thickness: float, bag_size: int) -> float:
    """The farthest volume slice (mm from the target) that a bag of ``bag_size`` 2.5D images reads: its outermost
    image is centred ``3 (N // 2)`` resampled slices away (three slices per image, VA sec. 3.2) and reads one more,
    each interpolated between the two volume slices of ``thickness`` mm around it."""
    offset = (3 * (bag_size // 2) + 1) * RESAMPLED_THICKNESS_MM
    return thickness * math.ceil(offset / thickness - 1e-9)


def _grid_period_mm(thickness: float) -> float:
    """Smallest distance (mm) that is a whole number of both ``thickness`` and 1.5 mm: slices of the volume that
    the resampling keeps as they are lie this far apart."""
    a, b = Fraction(str(thickness)), Fraction(str(RESAMPLED_THICKNESS_MM))
    return math.lcm(a.numerator, b.numerator) / math.gcd(a.denominator, b.denominator)


def _context_objects(
    rng,
    anatomy: ct.Anatomy,
    shape,
    spacing,
    center,
    context_bag: int | None = None,
    max_lookalikes: int | None = None,
) -> tuple[list[ct.Lesion], set[int]]:
    """2-5 liver objects of VA Table 2's sizes on one axial level, then some of them turned into look-alikes
    (:func:`shared.phantoms.context.make_lookalikes` with :func:`context_band_mm`; ``context_bag``: lesions end, and
    look-alikes run on, within :func:`bag_reach_mm` of a bag of that size; ``max_lookalikes``: at most that many);
    return the objects and the indices of the look-alikes (``center``: the grid's, as
    :func:`shared.phantoms.ct.ras_grid` takes it). The level is a slice of the volume that resampling to 1.5 mm
    keeps (the first slice plus a multiple of :func:`_grid_period_mm`), near the middle of the liver and of the field
    of view. Every object draws its texture from its own seed, so its look-alike and lesion versions differ only
    where their shapes do."""
    z = ct.ras_grid(shape, spacing, center)[2].ravel()
    step = round(_grid_period_mm(spacing[2]) / spacing[2])  # volume slices between two kept slices
    liver = anatomy.liver[0]
    target = np.clip(liver.center[2] + rng.uniform(-0.4, 0.4) * liver.radii[2], z[len(z) // 4], z[3 * len(z) // 4])
    level = float(z[min(step * round((target - z[0]) / (step * spacing[2])), (len(z) - 1) // step * step)])
    placed: list[ct.Lesion] = []
    for _ in range(int(rng.integers(2, 6))):
        lesion = ct.place_lesion(rng, anatomy, ct.LesionRequest("liver", _diameter(rng), level), placed)
        if lesion is not None:
            placed.append(dataclasses.replace(lesion, texture_seed=int(rng.integers(2**63))))
    band = context_band_mm(spacing)
    reach = None if context_bag is None else bag_reach_mm(spacing[2], context_bag)
    if reach is not None and reach <= band:
        raise ValueError(
            f"a bag of {context_bag} reads {reach:g} mm from the target at {spacing[2]:g} mm slices, not beyond the "
            f"{band:g} mm band that its target image reads: give a larger --context_bag"
        )
    return make_lookalikes(rng, placed, band, reach, max_lookalikes)


def _xy_box(shape: ct.Ellipsoid, scale: float = 1.0) -> tuple[float, float, float, float]:
    """In-plane box (x0, x1, y0, y1, world mm) of an ellipsoid rotated about z, scaled by ``scale``."""
    (cx, cy, _), (rx, ry, _), cos, sin = shape.center, shape.radii, math.cos(shape.angle), math.sin(shape.angle)
    half_x, half_y = scale * math.hypot(rx * cos, ry * sin), scale * math.hypot(rx * sin, ry * cos)
    return cx - half_x, cx + half_x, cy - half_y, cy + half_y


def liver_box_mm(anatomy: ct.Anatomy) -> tuple[float, float, float, float]:
    """In-plane box (x0, x1, y0, y1, world mm) around the liver's ellipsoids, within the muscle wall (where the
    liver is painted)."""
    lobes = [_xy_box(lobe) for lobe in anatomy.liver]
    wall = _xy_box(anatomy.body, anatomy.cavity_scale)
    x0, x1 = max(min(b[0] for b in lobes), wall[0]), min(max(b[1] for b in lobes), wall[1])
    y0, y1 = max(min(b[2] for b in lobes), wall[2]), min(max(b[3] for b in lobes), wall[3])
    return x0, x1, y0, y1


def _draw_case(rng, shape, thickness: float, with_context: bool, fov: str = "body", **context_options):
    """Draw a volume's anatomy, grid ((rows, cols, slices), spacing, centre) and lesions (requests, or context
    objects, :func:`_context_objects` with ``context_options``) and the indices of its look-alikes. ``fov``: the
    slices span the body's width (the grid centred at (0, 0, z)) or the liver's box (:func:`liver_box_mm`, centred
    on it), each with a margin of 5-20 %."""
    anatomy = ct.sample_anatomy(rng)
    rows, cols, slices = shape
    margin = rng.uniform(1.05, 1.2)
    num_slices = max(3, round(slices * RESAMPLED_THICKNESS_MM / thickness))
    z_center = rng.uniform(30, 60)
    if fov == "body":
        pixel, center = 2 * anatomy.body.radii[0] * margin / max(rows, cols), z_center
    else:
        x0, x1, y0, y1 = liver_box_mm(anatomy)
        pixel, center = max(x1 - x0, y1 - y0) * margin / max(rows, cols), ((x0 + x1) / 2, (y0 + y1) / 2, z_center)
    grid = ((rows, cols, num_slices), (pixel, pixel, thickness), center)
    if with_context:
        return anatomy, grid, *_context_objects(rng, anatomy, *grid, **context_options)
    return anatomy, grid, _lesion_requests(rng), set()


def draw_volume(
    key: int, seed: int, shape, context: bool, fov: str = "body", **context_options
) -> tuple[ct.Phantom, set[int]]:
    """Volume ``key`` (``volume-N`` is key N, ``test-volume-N`` 100000 + N) of the phantoms drawn with ``seed``, as
    :func:`make_phantoms` writes it: the phantom and the indices of its look-alikes among ``case.lesion_list``."""
    thickness = THICKNESSES_MM[(key + seed) % len(THICKNESSES_MM)]
    rng = np.random.default_rng([seed, key])
    anatomy, grid, lesions, chosen = _draw_case(rng, shape, thickness, context, fov, **context_options)
    return ct.make_abdomen(rng, *grid, lesions, anatomy), chosen


def _write_case(case: ct.Phantom, lookalikes: set[int], path: Path, label_path: Path | None) -> list[list[int]]:
    """Write the volume (and its labels: liver 1, lesions 2, look-alikes liver); return, for each look-alike with
    voxels, the one nearest its centre as [i, j, k] of the written image."""
    image, affine = ct.reorient(ct.to_hu_int16(case.hu), case.affine, AXCODES)
    with atomic_path(path) as tmp:
        ct.nifti(image, affine).to_filename(tmp)
    ids = ct.reorient(case.lesions, case.affine, AXCODES)[0]
    if label_path is not None:
        label = np.where(ct.reorient(case.organs, case.affine, AXCODES)[0] == ct.ORGAN["liver"], LIVER, 0)
        lesions = [i + 1 for i, lesion in enumerate(case.lesion_list) if lesion.site == "liver" and i not in lookalikes]
        label[np.isin(ids, lesions)] = LESION
        with atomic_path(label_path) as tmp:
            ct.nifti(label.astype(np.uint8), affine).to_filename(tmp)
    centres = []
    for i in sorted(lookalikes):
        voxels = np.argwhere(ids == i + 1)
        if len(voxels):
            centre = nib.affines.apply_affine(np.linalg.inv(affine), case.lesion_list[i].shape.center)
            centres.append(voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))].tolist())
    return centres


def make_phantoms(
    out_dir,
    num_cases: int = DEMO_NUM_CASES,
    seed: int = 0,
    shape=DEMO_SHAPE,
    num_test: int = 1,
    context: bool = False,
    context_bag: int | None = None,
    max_lookalikes: int | None = None,
    fov: str = "body",
) -> Path:
    """Write ``num_cases`` labelled volumes (``volume-0.nii``, ...) and ``num_test`` unlabelled
    ``test-volume-N.nii`` in the LiTS layout (LAS, int16 HU, uint8 labels); return the root.

    ``shape`` is (rows, cols, slices after resampling to 1.5 mm): a volume's z extent is ``slices * 1.5`` mm and
    its slice thickness ``THICKNESSES_MM[(N + seed) % 8]`` (0.7-5 mm), so on-disk slice counts vary
    (e.g. 96 -> 29 to 206 slices) and resampling matters. Volume N depends only on ``(seed, N)``: the same seed
    gives byte-identical files.

    ``context``: volumes where slices several slices away decide. Each volume's liver lesions are 2-5 objects on one
    axial level, of which 1 to all but one (when at least two fit) are look-alikes: within :func:`context_band_mm`
    of the level, the slices the target 2.5D image centred there reads and the slices the blur reaches, a
    look-alike is the lesion it was drawn as (same draws of size, place, HU, texture, noise), beyond it runs on as a
    tube 30-60 mm each way while lesions end 1.45-1.6 bands from the level. Look-alikes are labelled liver; the
    voxel of each nearest its centre is in ``context_lookalikes.json`` (``{volume file: [[i, j, k], ...]}``,
    indices of the written image).

    ``context_bag`` N (with ``context``): made for a bag of N images. Lesions are as round along z as in-plane, but
    end within what such a bag reads (:func:`bag_reach_mm`: 19.6-21 mm for N = 9) at every slice thickness, and
    look-alikes run up to 10 mm beyond it instead of 30-60 mm (:func:`shared.phantoms.context.make_lookalikes`):
    the bag sees every lesion end, and a detector that cannot tell look-alikes from lesions loses less to them.
    ``max_lookalikes`` (with ``context``): at most that many look-alikes per volume (at least one where two or more
    objects fit).

    ``fov``: what a slice's rows and columns span, with a margin of 5-20 %: ``body``, the body's width (2.1-3.0 mm
    pixels at 128 px), or ``liver``, the liver's in-plane box (:func:`liver_box_mm`; 1.3-1.9 mm, 1.6x finer on
    average), as a liver region crop of a cascade would give: lesions are more pixels across at the same image size.
    """
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"--fov {fov}: give one of {', '.join(FIELDS_OF_VIEW)}")
    if (context_bag is not None or max_lookalikes is not None) and not context:
        raise ValueError("--context_bag and --max_lookalikes shape context phantoms: give them with --context true")
    if context_bag is not None and (context_bag < 3 or context_bag % 2 == 0):
        raise ValueError(f"--context_bag {context_bag}: a bag is an odd number of images, 3 or more (VA uses 9)")
    if max_lookalikes is not None and max_lookalikes < 0:
        raise ValueError(f"--max_lookalikes {max_lookalikes}: give 0 or more")
    options = {"context_bag": context_bag, "max_lookalikes": max_lookalikes}
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(f"volume-{n}.nii", f"segmentation-{n}.nii", n) for n in range(num_cases)]
    jobs += [(f"test-volume-{n}.nii", None, 100_000 + n) for n in range(num_test)]
    lookalikes = {}
    for image_name, label_name, key in tqdm(jobs, desc="lits phantoms", unit="volume", disable=None):
        case, chosen = draw_volume(key, seed, shape, context, fov, **options)
        label_path = root / label_name if label_name else None
        lookalikes[image_name] = _write_case(case, chosen, root / image_name, label_path)
    if context:
        with atomic_path(root / LOOKALIKES_NAME) as tmp:
            tmp.write_text(json.dumps(lookalikes))
    return root
