"""KiTS19 phantoms: renal tumours (and liver look-alikes labelled background) in the KiTS19 layout and MSAN split.

Each case has one renal tumour (sometimes two) of 20-80 mm, drawn from a small (20-30 mm), medium (30-50 mm) or large
(50-80 mm) class; at the demo shape (48 x 96 x 96, pixels of 2.9-4.1 mm, slices of 3.1-4.4 mm) the smallest spans
5 voxels along its long axis. With ``mixed_sizes`` every case holds small and large tumours side by side (one of
50-80 mm beside two of 15-25 mm), the multi-scale case in which the MSAN paper says the 3D U-Net loses the small ones.
Look-alikes stay: renal cysts (0-20 HU, labelled kidney, as in KiTS19), necrotic cores of large tumours (15-40 HU),
hypodense liver lesions (labelled background) and the noise and blur of :func:`shared.phantoms.ct.make_abdomen`.
``<root>/phantom_tumours.json`` lists every tumour placed: its diameters in mm and in voxels of the case's grid.
"""

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.data.atomic import atomic_path
from shared.data.kits19 import (
    AXCODES,
    IMAGE,
    KIDNEY,
    LABEL,
    LABELLED_IDS,
    TEST_IDS,
    TRAINING_IDS,
    TUMOUR,
    VALIDATION_IDS,
    case_name,
)
from shared.phantoms import ct

DEMO_NUM_CASES = 12
DEMO_SHAPE = (48, 96, 96)


def phantom_case_ids(num_cases: int) -> list[int]:
    """Case ids of ``num_cases`` phantoms that populate every MSAN split.

    About a sixth of the cases go to the test ids (from 180) and a sixth to the validation ids (from 190), at least
    one each; the rest are training ids from 0. 12 cases give 0-7, 180-181 and 190-191.
    """
    if not 3 <= num_cases <= len(LABELLED_IDS):
        raise ValueError(f"num_cases must be in 3..{len(LABELLED_IDS)} to populate the three splits, got {num_cases}")
    n_test = min(max(1, round(num_cases / 6)), len(TEST_IDS))
    n_val = min(max(1, round(num_cases / 6)), len(VALIDATION_IDS))
    n_train = num_cases - n_test - n_val
    if n_train > len(TRAINING_IDS):
        n_val = len(VALIDATION_IDS)
        n_train = num_cases - n_test - n_val
    return [*TRAINING_IDS[:n_train], *TEST_IDS[:n_test], *VALIDATION_IDS[:n_val]]


TUMOUR_SIZES_MM = {"small": (20.0, 30.0), "medium": (30.0, 50.0), "large": (50.0, 80.0)}
"""Long-axis diameter (mm) of the renal tumours of each size class."""
MIXED_SIZES_MM = {"large": (50.0, 80.0), "small": (15.0, 25.0)}
"""With ``mixed_sizes``: one large and two small tumours per case."""
TUMOUR_LIST = "phantom_tumours.json"


def _tumour_requests(rng: np.random.Generator, mixed_sizes: bool) -> list[ct.LesionRequest]:
    """The case's renal tumours (largest first, so the small ones find room beside it) and maybe a liver look-alike."""
    if mixed_sizes:
        diameters = [rng.uniform(*MIXED_SIZES_MM["large"]), *rng.uniform(*MIXED_SIZES_MM["small"], 2)]
    else:
        classes = list(TUMOUR_SIZES_MM.values())
        count = 1 if rng.random() < 0.85 else 2
        diameters = sorted((rng.uniform(*classes[rng.integers(len(classes))]) for _ in range(count)), reverse=True)
    requests = [ct.LesionRequest("kidney", float(d)) for d in diameters]
    if rng.random() < 0.3:  # a hypodense liver lesion: a tumour look-alike labelled background in KiTS19
        requests.append(ct.LesionRequest("liver", rng.uniform(10, 30)))
    return requests


def tumour_sizes(case: ct.Phantom, spacing) -> list[dict]:
    """Diameters of each renal tumour of ``case``: in mm (long in-plane axis, short in-plane axis, along z) and in
    voxels of the grid of ``spacing`` (x, y, z mm), and its labelled voxels (after clipping to the body cavity)."""
    sizes = []
    for i, lesion in enumerate(case.lesion_list):
        if lesion.site != "kidney":
            continue
        diameters = [2 * r for r in lesion.shape.radii]
        sizes.append(
            {
                "diameters_mm": [round(d, 1) for d in diameters],
                "long_axis_voxels": round(diameters[0] / max(spacing[:2]), 1),
                "z_voxels": round(diameters[2] / spacing[2], 1),
                "labelled_voxels": int(np.count_nonzero(case.lesions == i + 1)),
            }
        )
    return sizes


def make_phantoms(
    out_dir,
    num_cases: int = DEMO_NUM_CASES,
    seed: int = 0,
    shape=DEMO_SHAPE,
    num_unlabeled: int = 0,
    mixed_sizes: bool = False,
) -> Path:
    """Write ``num_cases`` labelled phantom cases (ids from :func:`phantom_case_ids`) and ``num_unlabeled`` cases
    without segmentation (ids 210, 211, ...) in the KiTS19 layout, and the tumour list; return the root.

    ``shape`` is the on-disk array shape (slices, rows, cols). Each case covers 150-210 mm along z (slice thickness
    = that / slices) and a square in-plane field of view 1.05-1.2 times the body width. Case ``i`` depends only on
    ``(seed, i)``, so the same seed gives byte-identical files. ``mixed_sizes`` (a bool) puts small tumours beside a
    large one in every case.
    """
    if not isinstance(mixed_sizes, bool):
        raise ValueError(f"mixed_sizes must be True or False (command line: --mixed_sizes), got {mixed_sizes!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ids = phantom_case_ids(num_cases) + list(range(LABELLED_IDS.stop, LABELLED_IDS.stop + num_unlabeled))
    nz, ny, nx = shape
    tumours = {}
    for case_id in tqdm(ids, desc="kits19 phantoms", unit="case", disable=None):
        rng = np.random.default_rng([seed, case_id])
        anatomy = ct.sample_anatomy(rng)
        pixel = 2 * anatomy.body.radii[0] * rng.uniform(1.05, 1.2) / max(nx, ny)
        spacing = (pixel, pixel, rng.uniform(150, 210) / nz)
        requests = _tumour_requests(rng, mixed_sizes)
        case = ct.make_abdomen(rng, (nx, ny, nz), spacing, rng.uniform(-10, 10), requests, anatomy=anatomy)
        tumours[case_name(case_id)] = {
            "spacing_mm": [round(s, 2) for s in spacing],
            "tumours": tumour_sizes(case, spacing),
        }
        label = np.where(case.organs == ct.ORGAN["kidney"], KIDNEY, 0).astype(np.uint8)
        label[case.lesion_mask("kidney")] = TUMOUR
        image, affine = ct.reorient(ct.to_hu_int16(case.hu), case.affine, AXCODES)
        files = [(IMAGE, image)]
        if case_id in LABELLED_IDS:
            files.append((LABEL, ct.reorient(label, case.affine, AXCODES)[0]))
        for name, data in files:
            with atomic_path(root / case_name(case_id) / name) as tmp:
                ct.nifti(data, affine).to_filename(tmp)
    with atomic_path(root / TUMOUR_LIST) as tmp:
        Path(tmp).write_text(json.dumps(tumours, indent=1))
    return root
