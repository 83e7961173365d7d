"""KiTS19 phantoms: renal tumours (and liver look-alikes labelled background) in the KiTS19 layout and MSAN split."""

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


def _tumour_requests(rng: np.random.Generator) -> list[ct.LesionRequest]:
    """One renal tumour (sometimes two) of a small (10-25 mm), medium (25-50 mm) or large (50-85 mm) size class."""
    sizes = [(10, 25), (25, 50), (50, 85)]
    requests = [
        ct.LesionRequest("kidney", rng.uniform(*sizes[rng.integers(3)])) for _ in range(1 if rng.random() < 0.85 else 2)
    ]
    if rng.random() < 0.3:  # a hypodense liver lesion: a tumour look-alike labelled background in KiTS19
        requests.append(ct.LesionRequest("liver", rng.uniform(10, 30)))
    return requests


def make_phantoms(
    out_dir, num_cases: int = DEMO_NUM_CASES, seed: int = 0, shape=DEMO_SHAPE, num_unlabeled: int = 0
) -> Path:
    """Write ``num_cases`` labelled phantom cases (ids from :func:`phantom_case_ids`) and ``num_unlabeled`` cases
    without segmentation (ids 210, 211, ...) in the KiTS19 layout; return the root.

    ``shape`` is the on-disk array shape (slices, rows, cols). Each case covers 150-210 mm along z (slice thickness
    = that / slices) and a square in-plane field of view 1.05-1.2 times the body width. Case ``i`` depends only on
    ``(seed, i)``, so the same seed gives byte-identical files.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    ids = phantom_case_ids(num_cases) + list(range(LABELLED_IDS.stop, LABELLED_IDS.stop + num_unlabeled))
    nz, ny, nx = shape
    for case_id in tqdm(ids, desc="kits19 phantoms", unit="case", disable=None):
        rng = np.random.default_rng([seed, case_id])
        anatomy = ct.sample_anatomy(rng)
        pixel = 2 * anatomy.body.radii[0] * rng.uniform(1.05, 1.2) / max(nx, ny)
        spacing = (pixel, pixel, rng.uniform(150, 210) / nz)
        case = ct.make_abdomen(rng, (nx, ny, nz), spacing, rng.uniform(-10, 10), _tumour_requests(rng), anatomy=anatomy)
        label = np.where(case.organs == ct.ORGAN["kidney"], KIDNEY, 0).astype(np.uint8)
        label[case.lesion_mask("kidney")] = TUMOUR
        image, affine = ct.reorient(ct.to_hu_int16(case.hu), case.affine, AXCODES)
        files = [(IMAGE, image)]
        if case_id in LABELLED_IDS:
            files.append((LABEL, ct.reorient(label, case.affine, AXCODES)[0]))
        for name, data in files:
            with atomic_path(root / case_name(case_id) / name) as tmp:
                ct.nifti(data, affine).to_filename(tmp)
    return root
