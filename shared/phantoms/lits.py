"""LiTS phantoms: hypodense liver lesions of VA Table 2's size classes in the LiTS layout, varied slice thickness."""

from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.data.atomic import atomic_path
from shared.data.lits import AXCODES, LESION, LIVER, RESAMPLED_THICKNESS_MM
from shared.phantoms import ct

THICKNESSES_MM = (0.7, 5.0, 1.0, 2.5, 0.8, 3.0, 1.25, 2.0)  # spread over LiTS's 0.7-5 mm
DEMO_NUM_CASES = 8
DEMO_SHAPE = (96, 96, 96)


def _lesion_requests(rng: np.random.Generator) -> list[ct.LesionRequest]:
    """0-5 hypodense liver lesions, each small (<15 mm), medium (15-30 mm) or large (30-60 mm) as in VA Table 2."""
    count = rng.choice(6, p=[0.1, 0.25, 0.25, 0.2, 0.1, 0.1])
    sizes = [(6, 15), (15, 30), (30, 60)]
    return [ct.LesionRequest("liver", rng.uniform(*sizes[rng.integers(3)])) for _ in range(count)]


def _write_phantom(path: Path, label_path: Path | None, rng: np.random.Generator, shape, thickness: float) -> None:
    anatomy = ct.sample_anatomy(rng)
    rows, cols, slices = shape
    pixel = 2 * anatomy.body.radii[0] * rng.uniform(1.05, 1.2) / max(rows, cols)
    num_slices = max(3, round(slices * RESAMPLED_THICKNESS_MM / thickness))
    case = ct.make_abdomen(
        rng, (rows, cols, num_slices), (pixel, pixel, thickness), rng.uniform(30, 60), _lesion_requests(rng), anatomy
    )
    image, affine = ct.reorient(ct.to_hu_int16(case.hu), case.affine, AXCODES)
    with atomic_path(path) as tmp:
        ct.nifti(image, affine).to_filename(tmp)
    if label_path is not None:
        label = np.where(case.organs == ct.ORGAN["liver"], LIVER, 0).astype(np.uint8)
        label[case.lesion_mask("liver")] = LESION
        with atomic_path(label_path) as tmp:
            ct.nifti(ct.reorient(label, case.affine, AXCODES)[0], affine).to_filename(tmp)


def make_phantoms(out_dir, num_cases: int = DEMO_NUM_CASES, seed: int = 0, shape=DEMO_SHAPE, num_test: int = 1) -> Path:
    """Write ``num_cases`` labelled volumes (``volume-0.nii``, ...) and ``num_test`` unlabelled
    ``test-volume-N.nii`` in the LiTS layout (LAS, int16 HU, uint8 labels); return the root.

    ``shape`` is (rows, cols, slices after resampling to 1.5 mm): a volume's z extent is ``slices * 1.5`` mm and
    its slice thickness ``THICKNESSES_MM[(N + seed) % 8]`` (0.7-5 mm), so on-disk slice counts vary
    (e.g. 96 -> 29 to 206 slices) and resampling matters. Volume N depends only on ``(seed, N)``: the same seed
    gives byte-identical files.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(f"volume-{n}.nii", f"segmentation-{n}.nii", n) for n in range(num_cases)]
    jobs += [(f"test-volume-{n}.nii", None, 100_000 + n) for n in range(num_test)]
    for image_name, label_name, key in tqdm(jobs, desc="lits phantoms", unit="volume", disable=None):
        thickness = THICKNESSES_MM[(key + seed) % len(THICKNESSES_MM)]
        label_path = root / label_name if label_name else None
        _write_phantom(root / image_name, label_path, np.random.default_rng([seed, key]), shape, thickness)
    return root
