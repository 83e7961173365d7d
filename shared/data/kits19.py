"""KiTS19 (kidney tumour segmentation challenge 2019): layout, MSAN split datalist, validation, phantoms.

Layout of a root (the ``data`` folder of the official kits19 repository)::

    <root>/case_00000/imaging.nii.gz        int16 HU, array (slices, rows, cols), axis codes ('I', 'P', 'L')
    <root>/case_00000/segmentation.nii.gz   uint8 on the same grid: 0 background, 1 kidney, 2 tumour

Cases 0-209 are labelled; the challenge's test cases 210-299 have no segmentation.
"""

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.data import phantom_ct
from shared.data.atomic import atomic_path
from shared.data.check_cache import CheckCache
from shared.data.nifti_checks import check_image, check_pair
from shared.data.validation import root_problem

CLASSES = {0: "background", 1: "kidney", 2: "tumour"}
AXCODES = ("I", "P", "L")
IMAGE, LABEL = "imaging.nii.gz", "segmentation.nii.gz"
# MSAN paper sec. 2.1: "the first 180 of the released training sets as our own training set, using ten samples of
# the 180-190 serial number as our test set"; the Dice it reports is on the validation data, the remaining
# labelled cases 190-209.
TRAINING_IDS, TEST_IDS, VALIDATION_IDS = range(0, 180), range(180, 190), range(190, 210)
LABELLED_IDS = range(0, 210)
DEMO_NUM_CASES = 12
DEMO_SHAPE = (48, 96, 96)
_CASE = re.compile(r"case_(\d{5})")


def case_name(case_id: int) -> str:
    return f"case_{case_id:05d}"


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


def _tumour_requests(rng: np.random.Generator) -> list[phantom_ct.LesionRequest]:
    """One renal tumour (sometimes two) of a small (10-25 mm), medium (25-50 mm) or large (50-85 mm) size class."""
    sizes = [(10, 25), (25, 50), (50, 85)]
    requests = [
        phantom_ct.LesionRequest("kidney", rng.uniform(*sizes[rng.integers(3)]))
        for _ in range(1 if rng.random() < 0.85 else 2)
    ]
    if rng.random() < 0.3:  # a hypodense liver lesion: a tumour look-alike labelled background in KiTS19
        requests.append(phantom_ct.LesionRequest("liver", rng.uniform(10, 30)))
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
        anatomy = phantom_ct.sample_anatomy(rng)
        pixel = 2 * anatomy.body.radii[0] * rng.uniform(1.05, 1.2) / max(nx, ny)
        spacing = (pixel, pixel, rng.uniform(150, 210) / nz)
        case = phantom_ct.make_abdomen(
            rng, (nx, ny, nz), spacing, rng.uniform(-10, 10), _tumour_requests(rng), anatomy=anatomy
        )
        label = np.where(case.organs == phantom_ct.ORGAN["kidney"], 1, 0).astype(np.uint8)
        label[case.lesion_mask("kidney")] = 2
        image, affine = phantom_ct.reorient(phantom_ct.to_hu_int16(case.hu), case.affine, AXCODES)
        files = [(IMAGE, image)]
        if case_id in LABELLED_IDS:
            files.append((LABEL, phantom_ct.reorient(label, case.affine, AXCODES)[0]))
        for name, data in files:
            with atomic_path(root / case_name(case_id) / name) as tmp:
                phantom_ct.nifti(data, affine).to_filename(tmp)
    return root


def _case_dirs(root: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CASE.fullmatch(p.name)))


def validate(root) -> list[str]:
    """Every problem of a KiTS19 root, one message each starting with the path concerned (empty: valid).

    Reads every volume (files unchanged since they last passed are skipped, see :mod:`shared.data.check_cache`).
    """
    problem = root_problem("kits19", root, "case_00000/imaging.nii.gz")
    if problem:
        return [problem]
    root = Path(root)
    cases = _case_dirs(root)
    if not cases:
        return [
            f"{root}: no case_XXXXX folders; point --dataset_dir at the kits19 'data' folder holding "
            f"case_00000/imaging.nii.gz, or make phantoms with `python -m shared phantoms kits19 {root}`"
        ]
    problems, cache = [], CheckCache()
    for case_id, folder in tqdm(cases, desc="validating kits19", unit="case", disable=None, leave=False):
        image, label = folder / IMAGE, folder / LABEL
        if not image.is_file():
            problems.append(f"{image}: missing image; restore {IMAGE} of {folder.name} or remove the folder")
        if not label.is_file() and case_id in LABELLED_IDS:
            problems.append(f"{label}: missing label (KiTS19 labels cases 0-209); restore {LABEL} or remove the folder")
        if image.is_file() and label.is_file():
            problems += check_pair(image, label, CLASSES, "KiTS19", cache, foreground="kidney")
        elif image.is_file():
            problems += check_image(image, cache)
    cache.save()
    return problems


def make_datalist(root, seed: int = 0, fold: int = 0) -> dict:
    """MONAI datalist of a KiTS19 root with the MSAN split (sec. 2.1): ids 0-179 training, 180-189 test, 190-209
    validation; entries ``{"image", "label", "case"}`` with absolute paths.

    Cases without segmentation (the challenge test cases 210-299) are listed under ``"unlabeled"`` (no
    ``"label"``); labelled cases outside 0-209 (later KiTS releases) go to ``"test"``. The split is fixed by the
    paper, so ``seed`` and ``fold`` change nothing (they exist for the common dataset-module signature).
    """
    del seed, fold
    root = Path(root).resolve()
    data = {"training": [], "validation": [], "test": [], "unlabeled": []}
    for case_id, folder in _case_dirs(root):
        image, label = folder / IMAGE, folder / LABEL
        if not image.is_file():
            continue
        entry = {"image": str(image), "case": folder.name}
        if not label.is_file():
            data["unlabeled"].append(entry)
            continue
        entry = {"image": str(image), "label": str(label), "case": folder.name}
        if case_id in TRAINING_IDS:
            data["training"].append(entry)
        elif case_id in VALIDATION_IDS:
            data["validation"].append(entry)
        else:
            data["test"].append(entry)
    return data
