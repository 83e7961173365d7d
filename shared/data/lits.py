"""LiTS (liver tumour segmentation benchmark): layout, VA-paper split datalist, validation, phantoms.

Layout of a root (flat, or the official "Training Batch 1/2" sub-folders: files are found recursively)::

    <root>/volume-N.nii           CT in HU, array (rows, cols, slices), axis codes ('L', 'A', 'S')
    <root>/segmentation-N.nii     uint8 on the same grid: 0 background, 1 liver, 2 lesion
    <root>/test-volume-N.nii      challenge test volumes, no segmentation

``.nii.gz`` copies of the same names are accepted too.
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

CLASSES = {0: "background", 1: "liver", 2: "lesion"}
AXCODES = ("L", "A", "S")
RESAMPLED_THICKNESS_MM = 1.5  # VA paper sec. 3.2: "the slice-thickness resampled to 1.5mm"
PHANTOM_THICKNESSES_MM = (0.7, 5.0, 1.0, 2.5, 0.8, 3.0, 1.25, 2.0)  # spread over LiTS's 0.7-5 mm
NUM_FOLDS = 4  # VA paper sec. 3.2: 75 % of the training volumes for training, 25 % for validation
DEMO_NUM_CASES = 8
DEMO_SHAPE = (96, 96, 96)
_NAME = re.compile(r"(volume|segmentation|test-volume)-(\d+)\.nii(\.gz)?")


def _lesion_requests(rng: np.random.Generator) -> list[phantom_ct.LesionRequest]:
    """0-5 hypodense liver lesions, each small (<15 mm), medium (15-30 mm) or large (30-60 mm) as in VA Table 2."""
    count = rng.choice(6, p=[0.1, 0.25, 0.25, 0.2, 0.1, 0.1])
    sizes = [(6, 15), (15, 30), (30, 60)]
    return [phantom_ct.LesionRequest("liver", rng.uniform(*sizes[rng.integers(3)])) for _ in range(count)]


def _write_phantom(path: Path, label_path: Path | None, rng: np.random.Generator, shape, thickness: float) -> None:
    anatomy = phantom_ct.sample_anatomy(rng)
    rows, cols, slices = shape
    pixel = 2 * anatomy.body.radii[0] * rng.uniform(1.05, 1.2) / max(rows, cols)
    num_slices = max(3, round(slices * RESAMPLED_THICKNESS_MM / thickness))
    case = phantom_ct.make_abdomen(
        rng, (rows, cols, num_slices), (pixel, pixel, thickness), rng.uniform(30, 60), _lesion_requests(rng), anatomy
    )
    image, affine = phantom_ct.reorient(phantom_ct.to_hu_int16(case.hu), case.affine, AXCODES)
    with atomic_path(path) as tmp:
        phantom_ct.nifti(image, affine).to_filename(tmp)
    if label_path is not None:
        label = np.where(case.organs == phantom_ct.ORGAN["liver"], 1, 0).astype(np.uint8)
        label[case.lesion_mask("liver")] = 2
        with atomic_path(label_path) as tmp:
            phantom_ct.nifti(phantom_ct.reorient(label, case.affine, AXCODES)[0], affine).to_filename(tmp)


def make_phantoms(out_dir, num_cases: int = DEMO_NUM_CASES, seed: int = 0, shape=DEMO_SHAPE, num_test: int = 1) -> Path:
    """Write ``num_cases`` labelled volumes (``volume-0.nii``, ...) and ``num_test`` unlabelled
    ``test-volume-N.nii`` in the LiTS layout (LAS, int16 HU, uint8 labels); return the root.

    ``shape`` is (rows, cols, slices after resampling to 1.5 mm): a volume's z extent is ``slices * 1.5`` mm and
    its slice thickness ``PHANTOM_THICKNESSES_MM[(N + seed) % 8]`` (0.7-5 mm), so on-disk slice counts vary
    (e.g. 96 -> 29 to 206 slices) and resampling matters. Volume N depends only on ``(seed, N)``: the same seed
    gives byte-identical files.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(f"volume-{n}.nii", f"segmentation-{n}.nii", n) for n in range(num_cases)]
    jobs += [(f"test-volume-{n}.nii", None, 100_000 + n) for n in range(num_test)]
    for image_name, label_name, key in tqdm(jobs, desc="lits phantoms", unit="volume", disable=None):
        thickness = PHANTOM_THICKNESSES_MM[(key + seed) % len(PHANTOM_THICKNESSES_MM)]
        label_path = root / label_name if label_name else None
        _write_phantom(root / image_name, label_path, np.random.default_rng([seed, key]), shape, thickness)
    return root


def _scan(root: Path) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """Files by kind ("volume", "segmentation", "test-volume") and id, and problems with duplicate ids."""
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    problems = []
    for path in sorted(root.rglob("*.nii*")):
        match = _NAME.fullmatch(path.name)
        if not match:
            continue
        kind, number = match.group(1), int(match.group(2))
        if number in found[kind]:
            problems.append(f"{path}: duplicate of {found[kind][number]}; keep one copy of {kind}-{number}")
            continue
        found[kind][number] = path
    return found, problems


def validate(root) -> list[str]:
    """Every problem of a LiTS root, one message each starting with the path concerned (empty: valid).

    Reads every volume (files unchanged since they last passed are skipped, see :mod:`shared.data.check_cache`).
    """
    problem = root_problem("lits", root, "volume-0.nii and segmentation-0.nii")
    if problem:
        return [problem]
    root = Path(root)
    found, problems = _scan(root)
    if not found["volume"] and not found["test-volume"]:
        return [
            f"{root}: no volume-N.nii files; point --dataset_dir at the LiTS folder holding volume-N.nii and "
            f"segmentation-N.nii, or make phantoms with `python -m shared phantoms lits {root}`"
        ]
    volumes, labels = found["volume"], found["segmentation"]
    cache = CheckCache()
    for number in tqdm(sorted(volumes.keys() | labels.keys()), desc="validating lits", disable=None, leave=False):
        if number not in labels:
            problems.append(
                f"{volumes[number]}: missing label segmentation-{number}.nii; restore it or move the volume out"
            )
            problems += check_image(volumes[number], cache)
        elif number not in volumes:
            problems.append(f"{labels[number]}: missing image volume-{number}.nii; restore it or remove the label")
        else:
            problems += check_pair(volumes[number], labels[number], CLASSES, "LiTS", cache, foreground="liver")
    for path in found["test-volume"].values():
        problems += check_image(path, cache)
    cache.save()
    return problems


def make_datalist(root, seed: int = 0, fold: int = 0) -> dict:
    """MONAI datalist of a LiTS root with the VA paper's local split (sec. 3.2): the labelled volumes, shuffled with
    ``seed``, are cut into 4 quarters; quarter ``fold`` (0-3) is "validation" (25 %), the rest "training" (75 %).

    Entries are ``{"image", "label", "case": "volume-N"}`` with absolute paths, sorted by N; "test" lists the
    ``test-volume-N`` files and any volume without segmentation (``{"image", "case"}``).
    """
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be in 0..{NUM_FOLDS - 1} (which quarter is validation), got {fold}")
    found, _ = _scan(Path(root).resolve())
    volumes, labels = found["volume"], found["segmentation"]
    labelled = sorted(volumes.keys() & labels.keys())
    quarters = np.array_split(np.random.default_rng(seed).permutation(labelled), NUM_FOLDS)
    held_out = {int(n) for n in quarters[fold]}

    def entry(n):
        return {"image": str(volumes[n]), "label": str(labels[n]), "case": f"volume-{n}"}

    test = [{"image": str(p), "case": f"test-volume-{n}"} for n, p in sorted(found["test-volume"].items())]
    test += [{"image": str(volumes[n]), "case": f"volume-{n}"} for n in sorted(volumes.keys() - labels.keys())]
    return {
        "training": [entry(n) for n in labelled if n not in held_out],
        "validation": [entry(n) for n in labelled if n in held_out],
        "test": test,
    }
